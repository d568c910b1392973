//! RMSNorm: `x / sqrt(mean(x²) + eps) * w`, the statistic in f32 as transformers does.
//! At bf16 precision both products round, as transformers' Qwen3RMSNorm rounds the
//! normalized row to the input's dtype before the weight multiplies it.

use rayon::prelude::*;

use super::{CpuTensor, Precision};

pub fn rms_norm(x: &CpuTensor, w: &[f32], eps: f32, p: Precision) -> CpuTensor {
    let mut out = vec![0f32; x.data.len()];
    out.par_chunks_mut(x.cols)
        .zip(x.data.par_chunks(x.cols))
        .for_each(|(o, row)| rms_norm_row(row, w, eps, o, p));
    CpuTensor::new(out, x.rows, x.cols)
}

#[inline]
pub fn rms_norm_row(row: &[f32], w: &[f32], eps: f32, out: &mut [f32], p: Precision) {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(row).zip(w) {
        *o = p.r(p.r(v * inv) * g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_weight_gives_unit_rms() {
        let x = CpuTensor::new(vec![1.0, -2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5], 2, 4);
        let y = rms_norm(&x, &[1.0; 4], 0.0, Precision::F32);
        for r in 0..2 {
            let ms: f32 = y.row(r).iter().map(|v| v * v).sum::<f32>() / 4.0;
            assert!((ms - 1.0).abs() < 1e-6);
        }
        // Known value: [1,-2,3,4] has mean square 7.5.
        assert!((y.data[0] - 1.0 / 7.5f32.sqrt()).abs() < 1e-7);
    }
}

/// Backward of `rms_norm`: given the input x, weight w and dL/dy, returns (dL/dx, dL/dw).
/// With r = 1/sqrt(mean(x²)+eps) and x̂ = x·r: dx = r·(w∘dy − x̂·mean(x̂∘w∘dy)), dw = Σ_rows dy∘x̂.
pub fn rms_norm_backward(
    x: &CpuTensor,
    w: &[f32],
    dy: &CpuTensor,
    eps: f32,
) -> (CpuTensor, Vec<f32>) {
    let cols = x.cols;
    let mut dx = vec![0f32; x.data.len()];
    // Per-row dw contributions summed in row order: the same bits every run, whatever
    // the thread scheduling (training resumes must reproduce losses exactly).
    let parts: Vec<Vec<f32>> = dx
        .par_chunks_mut(cols)
        .zip(x.data.par_chunks(cols).zip(dy.data.par_chunks(cols)))
        .map(|(dxr, (xr, dyr))| rms_norm_row_backward(xr, w, dyr, eps, dxr))
        .collect();
    let mut dw = vec![0f32; cols];
    for part in parts {
        dw.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    (CpuTensor::new(dx, x.rows, cols), dw)
}

/// One row of the backward; writes dx and returns this row's contribution to dw.
pub fn rms_norm_row_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    eps: f32,
    dx: &mut [f32],
) -> Vec<f32> {
    let n = x.len() as f32;
    let ms = x.iter().map(|v| v * v).sum::<f32>() / n;
    let r = 1.0 / (ms + eps).sqrt();
    let dot: f32 = x
        .iter()
        .zip(w)
        .zip(dy)
        .map(|((&xi, &wi), &gi)| xi * r * wi * gi)
        .sum::<f32>()
        / n;
    let mut dw = vec![0f32; x.len()];
    for i in 0..x.len() {
        let xh = x[i] * r;
        dx[i] = r * (w[i] * dy[i] - xh * dot);
        dw[i] = dy[i] * xh;
    }
    dw
}

#[cfg(test)]
mod backward_tests {
    use super::*;
    use crate::backend::cpu::test_util::{assert_close, numeric_grad, rand_vec};

    #[test]
    fn backward_matches_finite_differences() {
        let (rows, cols, eps) = (3, 7, 1e-6);
        let x = rand_vec(rows * cols, 1);
        let w = rand_vec(cols, 2);
        let dy = rand_vec(rows * cols, 3);
        let loss = |x: &[f32], w: &[f32]| -> f64 {
            let y = rms_norm(
                &CpuTensor::new(x.to_vec(), rows, cols),
                w,
                eps,
                Precision::F32,
            );
            y.data
                .iter()
                .zip(&dy)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        };
        let (dx, dw) = rms_norm_backward(
            &CpuTensor::new(x.clone(), rows, cols),
            &w,
            &CpuTensor::new(dy.clone(), rows, cols),
            eps,
        );
        assert_close(&dx.data, &numeric_grad(|v| loss(v, &w), &x), 1e-3);
        assert_close(&dw, &numeric_grad(|v| loss(&x, v), &w), 1e-3);
    }
}
