//! Qwen3's attention input transform: per-head RMSNorm of q and k (weights shared by
//! all heads), then rotary embedding in the "rotate half" convention of transformers:
//! the pair (x[i], x[i + d/2]) rotates by angle position * inv_freq[i]. At bf16 precision
//! the cos/sin tables and every product and sum round to bf16, as transformers' bf16 run
//! computes `q * cos + rotate_half(q) * sin` on bf16 tensors.

use rayon::prelude::*;

use super::norm::{rms_norm_row, rms_norm_row_backward};
use super::{CpuTensor, Precision};
use crate::model::rope::Rope;

#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope(
    q: &mut CpuTensor,
    k: &mut CpuTensor,
    q_w: &[f32],
    k_w: &[f32],
    head_dim: usize,
    eps: f32,
    rope: &Rope,
    positions: &[u32],
    p: Precision,
) {
    let (qc, kc) = (q.cols, k.cols);
    q.data
        .par_chunks_mut(qc)
        .zip(k.data.par_chunks_mut(kc))
        .zip(positions.par_iter())
        .for_each(|((qrow, krow), &pos)| {
            let (mut cos, mut sin) = rope.cos_sin(pos);
            p.round(&mut cos);
            p.round(&mut sin);
            for head in qrow.chunks_mut(head_dim) {
                norm_rotate(head, q_w, eps, &cos, &sin, p);
            }
            for head in krow.chunks_mut(head_dim) {
                norm_rotate(head, k_w, eps, &cos, &sin, p);
            }
        });
}

fn norm_rotate(head: &mut [f32], w: &[f32], eps: f32, cos: &[f32], sin: &[f32], p: Precision) {
    let mut normed = vec![0f32; head.len()];
    rms_norm_row(head, w, eps, &mut normed, p);
    apply_rope(&normed, cos, sin, head, p);
}

/// out = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1].
pub fn apply_rope(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32], p: Precision) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        out[i] = p.r(p.r(a * cos[i]) - p.r(b * sin[i]));
        out[i + half] = p.r(p.r(b * cos[i]) + p.r(a * sin[i]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() {
        let rope = Rope::new(8, 10000.0);
        let x: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
        let mut out = vec![0f32; 8];
        let (c, s) = rope.cos_sin(0);
        apply_rope(&x, &c, &s, &mut out, Precision::F32);
        assert_eq!(out, x);
        let (c, s) = rope.cos_sin(37);
        apply_rope(&x, &c, &s, &mut out, Precision::F32);
        let n0: f32 = x.iter().map(|v| v * v).sum();
        let n1: f32 = out.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
        // The first pair rotates at frequency 1: angle 37 rad.
        let (a, b) = (x[0], x[4]);
        assert!((out[0] - (a * 37f32.cos() - b * 37f32.sin())).abs() < 1e-5);
    }
}

/// Backward of `qk_norm_rope`. Takes q and k as they were *before* the transform (the
/// projections' outputs) and the gradients at its output; returns the gradients at its
/// input, in place of `dq`/`dk`, and the gradients of the two norm weights. RoPE is a
/// rotation, so its backward is the rotation by the opposite angle.
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope_backward(
    q_pre: &CpuTensor,
    k_pre: &CpuTensor,
    dq: &mut CpuTensor,
    dk: &mut CpuTensor,
    q_w: &[f32],
    k_w: &[f32],
    head_dim: usize,
    eps: f32,
    rope: &Rope,
    positions: &[u32],
) -> (Vec<f32>, Vec<f32>) {
    let one = |pre: &CpuTensor, d: &mut CpuTensor, w: &[f32]| -> Vec<f32> {
        let cols = pre.cols;
        // Per-row parts summed in row order, so the result does not depend on scheduling.
        let parts: Vec<Vec<f32>> = d
            .data
            .par_chunks_mut(cols)
            .zip(pre.data.par_chunks(cols))
            .zip(positions.par_iter())
            .map(|((drow, prow), &pos)| {
                let mut dw = vec![0f32; head_dim];
                let (cos, sin) = rope.cos_sin(pos);
                let neg_sin: Vec<f32> = sin.iter().map(|s| -s).collect();
                for (dh, xh) in drow.chunks_mut(head_dim).zip(prow.chunks(head_dim)) {
                    let mut d_normed = vec![0f32; head_dim];
                    apply_rope(dh, &cos, &neg_sin, &mut d_normed, Precision::F32);
                    let part = rms_norm_row_backward(xh, w, &d_normed, eps, dh);
                    dw.iter_mut().zip(part).for_each(|(a, b)| *a += b);
                }
                dw
            })
            .collect();
        parts.into_iter().fold(vec![0f32; head_dim], |mut acc, p| {
            acc.iter_mut().zip(p).for_each(|(a, b)| *a += b);
            acc
        })
    };
    let dq_w = one(q_pre, dq, q_w);
    let dk_w = one(k_pre, dk, k_w);
    (dq_w, dk_w)
}

#[cfg(test)]
mod backward_tests {
    use super::*;
    use crate::backend::cpu::test_util::{assert_close, numeric_grad, rand_vec};

    #[test]
    fn backward_matches_finite_differences() {
        let (d, rows) = (8, 3);
        let rope = Rope::new(d, 10000.0);
        let positions = [0u32, 5, 17];
        let (q, k) = (rand_vec(rows * 2 * d, 1), rand_vec(rows * d, 2));
        let (qw, kw) = (rand_vec(d, 3), rand_vec(d, 4));
        let (gq, gk) = (rand_vec(rows * 2 * d, 5), rand_vec(rows * d, 6));
        let loss = |q: &[f32], k: &[f32], qw: &[f32], kw: &[f32]| -> f64 {
            let mut qt = CpuTensor::new(q.to_vec(), rows, 2 * d);
            let mut kt = CpuTensor::new(k.to_vec(), rows, d);
            qk_norm_rope(
                &mut qt,
                &mut kt,
                qw,
                kw,
                d,
                1e-6,
                &rope,
                &positions,
                Precision::F32,
            );
            let a: f64 = qt
                .data
                .iter()
                .zip(&gq)
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum();
            a + kt
                .data
                .iter()
                .zip(&gk)
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum::<f64>()
        };
        let mut dq = CpuTensor::new(gq.clone(), rows, 2 * d);
        let mut dk = CpuTensor::new(gk.clone(), rows, d);
        let (dqw, dkw) = qk_norm_rope_backward(
            &CpuTensor::new(q.clone(), rows, 2 * d),
            &CpuTensor::new(k.clone(), rows, d),
            &mut dq,
            &mut dk,
            &qw,
            &kw,
            d,
            1e-6,
            &rope,
            &positions,
        );
        assert_close(&dq.data, &numeric_grad(|v| loss(v, &k, &qw, &kw), &q), 2e-3);
        assert_close(&dk.data, &numeric_grad(|v| loss(&q, v, &qw, &kw), &k), 2e-3);
        assert_close(&dqw, &numeric_grad(|v| loss(&q, &k, v, &kw), &qw), 2e-3);
        assert_close(&dkw, &numeric_grad(|v| loss(&q, &k, &qw, v), &kw), 2e-3);
    }
}
