//! SwiGLU: `silu(gate) * up`, where `silu(g) = g * sigmoid(g)`. At bf16 precision silu's
//! output rounds before the product, as transformers' `act_fn(gate) * up` stores it.

use rayon::prelude::*;

use super::{CpuTensor, Precision};

pub fn swiglu(gate: &CpuTensor, up: &CpuTensor, p: Precision) -> CpuTensor {
    let data = gate
        .data
        .par_iter()
        .zip(up.data.par_iter())
        .map(|(&g, &u)| p.r(p.r(g / (1.0 + (-g).exp())) * u))
        .collect();
    CpuTensor::new(data, gate.rows, gate.cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let g = CpuTensor::new(vec![0.0, 1.0, -1.0], 1, 3);
        let u = CpuTensor::new(vec![5.0, 2.0, 2.0], 1, 3);
        let y = swiglu(&g, &u, Precision::F32);
        let s1 = 1.0 / (1.0 + (-1.0f32).exp());
        assert_eq!(y.data[0], 0.0);
        assert!((y.data[1] - 2.0 * s1).abs() < 1e-7);
        assert!((y.data[2] - 2.0 * -(1.0 - s1)).abs() < 1e-6);
    }
}

/// Backward of `swiglu`: y = silu(g)·u, so dg = dy·u·σ(g)(1 + g(1−σ(g))), du = dy·silu(g).
pub fn swiglu_backward(gate: &CpuTensor, up: &CpuTensor, dy: &CpuTensor) -> (CpuTensor, CpuTensor) {
    let (dg, du): (Vec<f32>, Vec<f32>) = gate
        .data
        .par_iter()
        .zip(up.data.par_iter())
        .zip(dy.data.par_iter())
        .map(|((&g, &u), &d)| {
            let s = 1.0 / (1.0 + (-g).exp());
            (d * u * s * (1.0 + g * (1.0 - s)), d * g * s)
        })
        .unzip();
    (
        CpuTensor::new(dg, gate.rows, gate.cols),
        CpuTensor::new(du, up.rows, up.cols),
    )
}

#[cfg(test)]
mod backward_tests {
    use super::*;
    use crate::backend::cpu::test_util::{assert_close, numeric_grad, rand_vec};

    #[test]
    fn backward_matches_finite_differences() {
        let (g, u, dy) = (rand_vec(10, 1), rand_vec(10, 2), rand_vec(10, 3));
        let loss = |g: &[f32], u: &[f32]| -> f64 {
            let y = swiglu(
                &CpuTensor::new(g.to_vec(), 2, 5),
                &CpuTensor::new(u.to_vec(), 2, 5),
                Precision::F32,
            );
            y.data
                .iter()
                .zip(&dy)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        };
        let (dg, du) = swiglu_backward(
            &CpuTensor::new(g.clone(), 2, 5),
            &CpuTensor::new(u.clone(), 2, 5),
            &CpuTensor::new(dy.clone(), 2, 5),
        );
        assert_close(&dg.data, &numeric_grad(|v| loss(v, &u), &g), 1e-3);
        assert_close(&du.data, &numeric_grad(|v| loss(&g, v), &u), 1e-3);
    }
}
