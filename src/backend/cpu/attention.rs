//! Causal GQA attention over the paged cache. Each new token of a sequence attends to
//! every cached position up to its own, reading K/V block by block through the
//! sequence's block table: exactly what the CUDA kernels compute, in plain loops.

use rayon::prelude::*;

use super::CpuTensor;
use super::dot::dot;
use crate::backend::AttentionShape;
use crate::kv::KvLayout;
use crate::model::batch::ForwardBatch;

/// One query head against `len` keys and values, fetched by position: the arithmetic every
/// attention path shares, so a token's output is bitwise the same whether its keys come
/// from the paged cache (decode, prefill, chunked prefill, recomputation after preemption)
/// or from the trainer's packed batch, and however many queries share the step. Writes
/// the softmax-weighted sum of values into `out`; returns the log-sum-exp of the scaled
/// scores (what the backward recomputes the probabilities from).
#[inline]
fn attend<'a>(
    q: &[f32],
    len: usize,
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    scale: f32,
    out: &mut [f32],
) -> f32 {
    let scores: Vec<f32> = (0..len).map(|j| dot(q, key(j)) * scale).collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = scores.iter().map(|&x| (x - max).exp()).collect();
    let denom: f32 = weights.iter().sum();
    out.fill(0.0);
    for (j, &w) in weights.iter().enumerate() {
        for (acc, &v) in out.iter_mut().zip(value(j)) {
            *acc += w * v;
        }
    }
    let inv = 1.0 / denom;
    out.iter_mut().for_each(|x| *x *= inv);
    max + denom.ln()
}

pub fn paged_attention(
    q: &CpuTensor,
    k_pool: &[f32],
    v_pool: &[f32],
    layout: &KvLayout,
    batch: &ForwardBatch,
    shape: AttentionShape,
) -> CpuTensor {
    let AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    } = shape;
    let group = num_heads / num_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let bs = layout.block_size;

    // row -> (sequence, position of that row's token)
    let mut row_info = vec![(0usize, 0usize); q.rows];
    for (s, seq) in batch.seqs.iter().enumerate() {
        let first_pos = seq.context_len - seq.query_len;
        for i in 0..seq.query_len {
            row_info[seq.query_start + i] = (s, first_pos + i);
        }
    }

    let mut out = vec![0f32; q.rows * num_heads * head_dim];
    out.par_chunks_mut(head_dim)
        .enumerate()
        .for_each(|(idx, o)| {
            let (row, head) = (idx / num_heads, idx % num_heads);
            let (s, pos) = row_info[row];
            let table = &batch.seqs[s].block_table;
            let kv_head = head / group;
            let qv = &q.data[row * q.cols + head * head_dim..][..head_dim];

            let slot = |j: usize| table[j / bs] as usize * bs + j % bs;
            let at = |j: usize| layout.slot_offset(slot(j), kv_head);
            let keys = |j: usize| &k_pool[at(j)..][..head_dim];
            let values = |j: usize| &v_pool[at(j)..][..head_dim];
            attend(qv, pos + 1, keys, values, scale, o);
        });
    CpuTensor::new(out, q.rows, num_heads * head_dim)
}

/// Training attention over packed sequences (`bounds[s]..bounds[s+1]` are sequence s's
/// rows), causal within each sequence. Returns the output and each (row, head)'s
/// log-sum-exp of scaled scores, which the backward uses to recompute the softmax
/// instead of storing the T×T matrix (flash-attention 2's trade).
pub fn varlen_attention(
    q: &CpuTensor,
    k: &CpuTensor,
    v: &CpuTensor,
    bounds: &[usize],
    shape: AttentionShape,
) -> (CpuTensor, Vec<f32>) {
    let AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    } = shape;
    let group = num_heads / num_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let seq_start = row_starts(bounds, q.rows);
    let mut out = vec![0f32; q.rows * num_heads * head_dim];
    let mut lse = vec![0f32; q.rows * num_heads];
    out.par_chunks_mut(head_dim)
        .zip(lse.par_iter_mut())
        .enumerate()
        .for_each(|(idx, (o, l))| {
            let (row, head) = (idx / num_heads, idx % num_heads);
            let kvh = head / group;
            let qv = &q.data[row * q.cols + head * head_dim..][..head_dim];
            let start = seq_start[row];
            let keys = |j: usize| &k.data[(start + j) * k.cols + kvh * head_dim..][..head_dim];
            let values = |j: usize| &v.data[(start + j) * v.cols + kvh * head_dim..][..head_dim];
            *l = attend(qv, row - start + 1, keys, values, scale, o);
        });
    (CpuTensor::new(out, q.rows, num_heads * head_dim), lse)
}

/// One (sequence, KV head) task's result: (sequence, kv head, dq, dk, dv).
type TaskGrads = (usize, usize, Vec<f32>, Vec<f32>, Vec<f32>);

/// Backward of `varlen_attention`: (dq, dk, dv). With P recomputed from the saved
/// log-sum-exp and Dᵢ = dOᵢ·Oᵢ: dS = P∘(dO·Vᵀ − D), dQ = dS·K·scale, dK = dSᵀ·Q·scale,
/// dV = Pᵀ·dO; each KV head sums over the query heads of its group.
#[allow(clippy::too_many_arguments)]
pub fn varlen_attention_backward(
    q: &CpuTensor,
    k: &CpuTensor,
    v: &CpuTensor,
    out: &CpuTensor,
    lse: &[f32],
    d_out: &CpuTensor,
    bounds: &[usize],
    shape: AttentionShape,
) -> (CpuTensor, CpuTensor, CpuTensor) {
    let AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    } = shape;
    let group = num_heads / num_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let d = head_dim;
    // One task per (sequence, KV head): its dK/dV rows and its group's dQ columns are its own.
    let tasks: Vec<(usize, usize)> = (0..bounds.len() - 1)
        .flat_map(|s| (0..num_kv_heads).map(move |g| (s, g)))
        .collect();
    let parts: Vec<TaskGrads> = tasks
        .par_iter()
        .map(|&(s, g)| {
            let (lo, hi) = (bounds[s], bounds[s + 1]);
            let n = hi - lo;
            let mut dq = vec![0f32; n * group * d];
            let mut dk = vec![0f32; n * d];
            let mut dv = vec![0f32; n * d];
            for hq in 0..group {
                let head = g * group + hq;
                for i in 0..n {
                    let row = lo + i;
                    let qi = &q.data[row * q.cols + head * d..][..d];
                    let doi = &d_out.data[row * d_out.cols + head * d..][..d];
                    let oi = &out.data[row * out.cols + head * d..][..d];
                    let di = dot(doi, oi);
                    let l = lse[row * num_heads + head];
                    for j in 0..=i {
                        let kj = &k.data[(lo + j) * k.cols + g * d..][..d];
                        let vj = &v.data[(lo + j) * v.cols + g * d..][..d];
                        let p = (dot(qi, kj) * scale - l).exp();
                        let ds = p * (dot(doi, vj) - di) * scale;
                        let dqi = &mut dq[(i * group + hq) * d..][..d];
                        dqi.iter_mut().zip(kj).for_each(|(a, b)| *a += ds * b);
                        let dkj = &mut dk[j * d..][..d];
                        dkj.iter_mut().zip(qi).for_each(|(a, b)| *a += ds * b);
                        let dvj = &mut dv[j * d..][..d];
                        dvj.iter_mut().zip(doi).for_each(|(a, b)| *a += p * b);
                    }
                }
            }
            (s, g, dq, dk, dv)
        })
        .collect();
    let mut dq = vec![0f32; q.data.len()];
    let mut dk = vec![0f32; k.data.len()];
    let mut dv = vec![0f32; v.data.len()];
    for (s, g, pq, pk, pv) in parts {
        let lo = bounds[s];
        for i in 0..bounds[s + 1] - lo {
            let row = lo + i;
            for hq in 0..group {
                let head = g * group + hq;
                dq[row * q.cols + head * d..][..d]
                    .copy_from_slice(&pq[(i * group + hq) * d..][..d]);
            }
            dk[row * k.cols + g * d..][..d].copy_from_slice(&pk[i * d..][..d]);
            dv[row * v.cols + g * d..][..d].copy_from_slice(&pv[i * d..][..d]);
        }
    }
    (
        CpuTensor::new(dq, q.rows, q.cols),
        CpuTensor::new(dk, k.rows, k.cols),
        CpuTensor::new(dv, v.rows, v.cols),
    )
}

/// For each row, the first row of its sequence.
fn row_starts(bounds: &[usize], rows: usize) -> Vec<usize> {
    let mut starts = vec![0; rows];
    for w in bounds.windows(2) {
        starts[w[0]..w[1]].fill(w[0]);
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_util::{assert_close, numeric_grad, rand_vec};

    #[test]
    fn backward_matches_finite_differences_with_gqa_and_two_sequences() {
        let shape = AttentionShape {
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 4,
        };
        let rows = 7;
        let bounds = [0, 3, 7];
        let (q, k, v) = (
            rand_vec(rows * 16, 1),
            rand_vec(rows * 8, 2),
            rand_vec(rows * 8, 3),
        );
        let g = rand_vec(rows * 16, 4);
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            let (o, _) = varlen_attention(
                &CpuTensor::new(q.to_vec(), rows, 16),
                &CpuTensor::new(k.to_vec(), rows, 8),
                &CpuTensor::new(v.to_vec(), rows, 8),
                &bounds,
                shape,
            );
            o.data
                .iter()
                .zip(&g)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        };
        let (qt, kt, vt) = (
            CpuTensor::new(q.clone(), rows, 16),
            CpuTensor::new(k.clone(), rows, 8),
            CpuTensor::new(v.clone(), rows, 8),
        );
        let (o, lse) = varlen_attention(&qt, &kt, &vt, &bounds, shape);
        let (dq, dk, dv) = varlen_attention_backward(
            &qt,
            &kt,
            &vt,
            &o,
            &lse,
            &CpuTensor::new(g.clone(), rows, 16),
            &bounds,
            shape,
        );
        assert_close(&dq.data, &numeric_grad(|x| loss(x, &k, &v), &q), 2e-3);
        assert_close(&dk.data, &numeric_grad(|x| loss(&q, x, &v), &k), 2e-3);
        assert_close(&dv.data, &numeric_grad(|x| loss(&q, &k, x), &v), 2e-3);
    }
}
