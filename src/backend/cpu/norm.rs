//! RMSNorm: `x / sqrt(mean(x²) + eps) * w`, the statistic in f32 as transformers does.

use rayon::prelude::*;

use super::CpuTensor;

pub fn rms_norm(x: &CpuTensor, w: &[f32], eps: f32) -> CpuTensor {
    let mut out = vec![0f32; x.data.len()];
    out.par_chunks_mut(x.cols)
        .zip(x.data.par_chunks(x.cols))
        .for_each(|(o, row)| rms_norm_row(row, w, eps, o));
    CpuTensor::new(out, x.rows, x.cols)
}

#[inline]
pub fn rms_norm_row(row: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(row).zip(w) {
        *o = v * inv * g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_weight_gives_unit_rms() {
        let x = CpuTensor::new(vec![1.0, -2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5], 2, 4);
        let y = rms_norm(&x, &[1.0; 4], 0.0);
        for r in 0..2 {
            let ms: f32 = y.row(r).iter().map(|v| v * v).sum::<f32>() / 4.0;
            assert!((ms - 1.0).abs() < 1e-6);
        }
        // Known value: [1,-2,3,4] has mean square 7.5.
        assert!((y.data[0] - 1.0 / 7.5f32.sqrt()).abs() < 1e-7);
    }
}
