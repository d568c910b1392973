//! Qwen3's attention input transform: per-head RMSNorm of q and k (weights shared by
//! all heads), then rotary embedding in the "rotate half" convention of transformers:
//! the pair (x[i], x[i + d/2]) rotates by angle position * inv_freq[i].

use rayon::prelude::*;

use super::CpuTensor;
use super::norm::rms_norm_row;
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
) {
    let (qc, kc) = (q.cols, k.cols);
    q.data
        .par_chunks_mut(qc)
        .zip(k.data.par_chunks_mut(kc))
        .zip(positions.par_iter())
        .for_each(|((qrow, krow), &pos)| {
            let (cos, sin) = rope.cos_sin(pos);
            for head in qrow.chunks_mut(head_dim) {
                norm_rotate(head, q_w, eps, &cos, &sin);
            }
            for head in krow.chunks_mut(head_dim) {
                norm_rotate(head, k_w, eps, &cos, &sin);
            }
        });
}

fn norm_rotate(head: &mut [f32], w: &[f32], eps: f32, cos: &[f32], sin: &[f32]) {
    let mut normed = vec![0f32; head.len()];
    rms_norm_row(head, w, eps, &mut normed);
    apply_rope(&normed, cos, sin, head);
}

/// out = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1].
pub fn apply_rope(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        out[i] = a * cos[i] - b * sin[i];
        out[i + half] = b * cos[i] + a * sin[i];
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
        apply_rope(&x, &c, &s, &mut out);
        assert_eq!(out, x);
        let (c, s) = rope.cos_sin(37);
        apply_rope(&x, &c, &s, &mut out);
        let n0: f32 = x.iter().map(|v| v * v).sum();
        let n1: f32 = out.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
        // The first pair rotates at frequency 1: angle 37 rad.
        let (a, b) = (x[0], x[4]);
        assert!((out[0] - (a * 37f32.cos() - b * 37f32.sin())).abs() < 1e-5);
    }
}
