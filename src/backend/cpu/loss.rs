//! Fused final projection + cross-entropy: the loss, dL/dh and dL/dW computed a vocabulary
//! chunk at a time, so the full tokens × vocabulary logits never exist at once (for
//! Qwen3's 151,936-token vocabulary they would be 600 KB per token in f32).
//!
//! loss = Σₜ wₜ · CE(h_t·Wᵀ, target_t) / normalizer. Per-token weights carry loss masks
//! (0/1) now and GRPO advantages later; rows with weight 0 are skipped entirely.

use rayon::prelude::*;

use super::matmul::{linear_backward_input, linear_backward_weight};
use super::{CpuTensor, Precision, bf16_linear};

/// Vocabulary columns per chunk.
const CHUNK: usize = 8192;

pub struct CrossEntropyOutput {
    /// Σ wₜ·CEₜ / normalizer.
    pub loss: f64,
    /// Unweighted CEₜ per row (0 for skipped rows).
    pub token_losses: Vec<f32>,
    pub d_hidden: CpuTensor,
}

/// `h` [T, H] final hidden states; `w` [V, H] the output projection (lm_head or tied
/// embeddings), whose gradient is added to `dw`. The logits are the forward's at
/// `precision`; the backward's products are f32 against the master weights.
#[allow(clippy::too_many_arguments)]
pub fn fused_linear_cross_entropy(
    h: &CpuTensor,
    w: &[f32],
    vocab: usize,
    targets: &[u32],
    weights: &[f32],
    normalizer: f32,
    dw: &mut [f32],
    precision: Precision,
) -> CrossEntropyOutput {
    let hidden = h.cols;
    let active: Vec<usize> = (0..h.rows).filter(|&t| weights[t] != 0.0).collect();
    let ta = active.len();
    let mut d_hidden = CpuTensor::new(vec![0f32; h.rows * hidden], h.rows, hidden);
    let mut token_losses = vec![0f32; h.rows];
    if ta == 0 {
        return CrossEntropyOutput {
            loss: 0.0,
            token_losses,
            d_hidden,
        };
    }
    let ha: Vec<f32> = active
        .iter()
        .flat_map(|&t| h.row(t).iter().copied())
        .collect();

    let (lse, target_logit) =
        lse_and_target(&ha, ta, hidden, w, vocab, precision, |r| targets[active[r]]);
    let mut loss = 0f64;
    for r in 0..ta {
        let t = active[r];
        token_losses[t] = lse[r] - target_logit[r];
        loss += weights[t] as f64 * token_losses[t] as f64;
    }
    loss /= normalizer as f64;

    // Pass 2: dlogits = (softmax − onehot)·w/normalizer, chunk by chunk.
    let mut dha = vec![0f32; ta * hidden];
    for c0 in (0..vocab).step_by(CHUNK) {
        let c1 = (c0 + CHUNK).min(vocab);
        let width = c1 - c0;
        let mut dlog = chunk_logits(&ha, ta, hidden, w, c0, c1, precision);
        dlog.par_chunks_mut(width).enumerate().for_each(|(r, row)| {
            let scale = weights[active[r]] / normalizer;
            let t = targets[active[r]] as usize;
            for (j, x) in row.iter_mut().enumerate() {
                let p = (*x - lse[r]).exp();
                *x = (p - if c0 + j == t { 1.0 } else { 0.0 }) * scale;
            }
        });
        let dh = linear_backward_input(&dlog, ta, width, &w[c0 * hidden..c1 * hidden], hidden);
        dha.iter_mut().zip(dh).for_each(|(a, b)| *a += b);
        linear_backward_weight(
            &dlog,
            ta,
            width,
            &ha,
            hidden,
            &mut dw[c0 * hidden..c1 * hidden],
        );
    }
    for (r, &t) in active.iter().enumerate() {
        d_hidden.data[t * hidden..(t + 1) * hidden]
            .copy_from_slice(&dha[r * hidden..(r + 1) * hidden]);
    }
    CrossEntropyOutput {
        loss,
        token_losses,
        d_hidden,
    }
}

/// Rows of logits `target_log_probs` holds at once (rows x vocab f32).
const LOGIT_ROWS: usize = 64;

/// log p(target) of every row of `h` [T, H] under `w` [V, H], computed exactly as the
/// sampler computes a token's log-prob: the same packed product for the logits, then the
/// same `log_prob` over the whole row. GRPO's ratio numerator therefore equals the
/// sampler's log-prob bit for bit while the weights are the ones that sampled.
pub fn target_log_probs(
    h: &CpuTensor,
    w: &super::CpuWeight,
    targets: &[u32],
    precision: Precision,
) -> Vec<f32> {
    let vocab = w.rows();
    let mut out = Vec::with_capacity(h.rows);
    for r0 in (0..h.rows).step_by(LOGIT_ROWS) {
        let r1 = (r0 + LOGIT_ROWS).min(h.rows);
        let rows = &h.data[r0 * h.cols..r1 * h.cols];
        let mut logits = super::matmul::linear(rows, r1 - r0, h.cols, w, precision);
        precision.round(&mut logits);
        let block: Vec<f32> = logits
            .par_chunks(vocab)
            .zip(&targets[r0..r1])
            .map(|(row, &t)| crate::engine::sampling::log_prob(row, t))
            .collect();
        out.extend(block);
    }
    out
}

fn chunk_logits(
    h: &[f32],
    rows: usize,
    hidden: usize,
    w: &[f32],
    c0: usize,
    c1: usize,
    precision: Precision,
) -> Vec<f32> {
    // The kernel inference logits come from, at the same precision: each logit is the same
    // reduction over the hidden size whichever columns share its chunk, so sampler and
    // trainer agree.
    let w = &w[c0 * hidden..c1 * hidden];
    match precision {
        Precision::F32 => {
            super::packed::linear(h, rows, &super::packed::Packed::new(w, c1 - c0, hidden))
        }
        Precision::Bf16 => {
            let panels =
                bf16_linear::Bf16Panels::new(w, c1 - c0, hidden, bf16_linear::Bf16Kernel::best());
            let mut logits = bf16_linear::linear(h, rows, &panels);
            precision.round(&mut logits);
            logits
        }
    }
}

/// Each row's log-sum-exp over the vocabulary (online over chunks) and its target's logit.
fn lse_and_target(
    h: &[f32],
    rows: usize,
    hidden: usize,
    w: &[f32],
    vocab: usize,
    precision: Precision,
    target: impl Fn(usize) -> u32 + Sync,
) -> (Vec<f32>, Vec<f32>) {
    // The sum of exponentials in f64, as the sampler's `log_prob` keeps it: the loss of a
    // token then equals -log p of `target_log_probs` to f32 rounding of the result only.
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0f64; rows];
    let mut target_logit = vec![0f32; rows];
    for c0 in (0..vocab).step_by(CHUNK) {
        let c1 = (c0 + CHUNK).min(vocab);
        let logits = chunk_logits(h, rows, hidden, w, c0, c1, precision);
        let width = c1 - c0;
        max.par_iter_mut()
            .zip(sum.par_iter_mut())
            .zip(target_logit.par_iter_mut())
            .enumerate()
            .for_each(|(r, ((m, s), tl))| {
                let row = &logits[r * width..(r + 1) * width];
                let cmax = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let new_max = m.max(cmax);
                let shift = new_max as f64;
                *s = *s * (*m as f64 - shift).exp()
                    + row.iter().map(|&x| (x as f64 - shift).exp()).sum::<f64>();
                *m = new_max;
                let t = target(r) as usize;
                if (c0..c1).contains(&t) {
                    *tl = row[t - c0];
                }
            });
    }
    let lse = max
        .iter()
        .zip(&sum)
        .map(|(&m, s)| (m as f64 + s.ln()) as f32)
        .collect();
    (lse, target_logit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_util::{assert_close, numeric_grad, rand_vec};

    #[test]
    fn matches_finite_differences_with_weights_and_masked_rows() {
        let (t, hdim, vocab) = (4, 6, 11);
        let h = rand_vec(t * hdim, 1);
        let w = rand_vec(vocab * hdim, 2);
        let targets = [3u32, 0, 10, 7];
        let weights = [1.0f32, 0.0, 0.5, 2.0];
        let loss_of = |h: &[f32], w: &[f32]| -> f64 {
            let mut dw = vec![0f32; w.len()];
            fused_linear_cross_entropy(
                &CpuTensor::new(h.to_vec(), t, hdim),
                w,
                vocab,
                &targets,
                &weights,
                3.5,
                &mut dw,
                Precision::F32,
            )
            .loss
        };
        let mut dw = vec![0f32; w.len()];
        let out = fused_linear_cross_entropy(
            &CpuTensor::new(h.clone(), t, hdim),
            &w,
            vocab,
            &targets,
            &weights,
            3.5,
            &mut dw,
            Precision::F32,
        );
        // Direct definition for the loss value.
        let mut want = 0f64;
        for r in 0..t {
            let logits: Vec<f64> = (0..vocab)
                .map(|v| {
                    (0..hdim)
                        .map(|d| h[r * hdim + d] as f64 * w[v * hdim + d] as f64)
                        .sum()
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + logits.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            want += weights[r] as f64 * (lse - logits[targets[r] as usize]);
        }
        assert!((out.loss - want / 3.5).abs() < 1e-5);
        assert_close(
            &out.d_hidden.data,
            &numeric_grad(|x| loss_of(x, &w), &h),
            1e-3,
        );
        assert_close(&dw, &numeric_grad(|x| loss_of(&h, x), &w), 1e-3);
        assert!(
            out.d_hidden.row(1).iter().all(|&x| x == 0.0),
            "masked row gets no gradient"
        );
    }
}
