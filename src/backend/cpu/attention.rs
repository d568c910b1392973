//! Causal GQA attention over the paged cache. Each new token of a sequence attends to
//! every cached position up to its own, reading K/V block by block through the
//! sequence's block table: exactly what the CUDA kernels compute, in plain loops.

use rayon::prelude::*;

use super::dot::{axpy, dot};
use super::{CpuTensor, Precision};
use crate::backend::AttentionShape;
use crate::kv::KvLayout;
use crate::model::batch::ForwardBatch;

/// Consecutive query rows of one sequence per task: they share every key and value they
/// read, so a block of them reads each K/V row once instead of once per query.
const QUERY_BLOCK: usize = 16;

/// The queries of one task: `rows` consecutive positions of one sequence, the first with
/// `first_len` keys (the others one more each), times the `group` query heads that share
/// one KV head. `q(r, g)` is row r's query for head g.
struct QueryBlock<Q> {
    q: Q,
    rows: usize,
    group: usize,
    first_len: usize,
}

/// A query block against its keys and values, fetched by position: the arithmetic every
/// attention path shares. Each query's numbers are one fixed sequence of operations: its
/// scores in key order (the 32-lane `dot`), their max, the exponentials summed in key
/// order, the values weighted and added in key order, one scale by the inverse sum. The
/// block only decides which queries share a K/V load, so a token's output is bitwise the
/// same from the paged cache (decode, prefill, chunked prefill, recomputation after
/// preemption) or the trainer's packed batch, alone or with any neighbours. Writes
/// `[rows][group][head_dim]` into `out` and each query's log-sum-exp of scaled scores
/// (what the backward recomputes the probabilities from) into `lse`. At bf16 precision
/// the exponentials are rounded to bf16 after their sum and before they weight the
/// values, as torch's CPU flash attention feeds its bf16 product with V.
#[inline]
fn attend<'a, Q: Fn(usize, usize) -> &'a [f32]>(
    block: &QueryBlock<Q>,
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    scale: f32,
    precision: Precision,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let QueryBlock {
        rows,
        group,
        first_len,
        ..
    } = *block;
    let len = |r: usize| first_len + r;
    let head_dim = out.len() / (rows * group);
    let mut weights: Vec<Vec<f32>> = (0..rows * group)
        .map(|i| Vec::with_capacity(len(i / group)))
        .collect();
    for j in 0..len(rows - 1) {
        let kj = key(j);
        // Rows from here on are at or past key j.
        for r in (j + 1).saturating_sub(first_len)..rows {
            for g in 0..group {
                weights[r * group + g].push(dot((block.q)(r, g), kj) * scale);
            }
        }
    }
    let mut inv = vec![0f32; rows * group];
    for (i, scores) in weights.iter_mut().enumerate() {
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        scores.iter_mut().for_each(|x| *x = (*x - max).exp());
        let denom: f32 = scores.iter().sum();
        inv[i] = 1.0 / denom;
        lse[i] = max + denom.ln();
        precision.round(scores);
    }
    out.fill(0.0);
    for j in 0..len(rows - 1) {
        let vj = value(j);
        for (i, o) in out.chunks_mut(head_dim).enumerate() {
            if let Some(&w) = weights[i].get(j) {
                axpy(o, w, vj);
            }
        }
    }
    for (o, &s) in out.chunks_mut(head_dim).zip(&inv) {
        o.iter_mut().for_each(|x| *x *= s);
    }
}

/// One task: `rows` query rows from `row0` (consecutive positions of one sequence) and
/// KV head `kv_head`.
struct Task {
    row0: usize,
    rows: usize,
    kv_head: usize,
    /// Keys of the first row (its position + 1).
    first_len: usize,
    /// The sequence's index in the batch (paged) or its first row (packed).
    seq: usize,
}

impl Task {
    /// This task's queries in `q` `[rows, heads * head_dim]`.
    fn queries<'a>(
        &self,
        q: &'a CpuTensor,
        group: usize,
        head_dim: usize,
    ) -> QueryBlock<impl Fn(usize, usize) -> &'a [f32]> {
        let (row0, head0) = (self.row0, self.kv_head * group);
        QueryBlock {
            q: move |r: usize, g: usize| {
                &q.data[(row0 + r) * q.cols + (head0 + g) * head_dim..][..head_dim]
            },
            rows: self.rows,
            group,
            first_len: self.first_len,
        }
    }
}

/// Splits each sequence's rows into query blocks, times every KV head.
fn tasks(
    seqs: impl Iterator<Item = (usize, usize, usize, usize)>,
    num_kv_heads: usize,
) -> Vec<Task> {
    let mut out = Vec::new();
    for (seq, row0, rows, first_pos) in seqs {
        for b in (0..rows).step_by(QUERY_BLOCK) {
            for kv_head in 0..num_kv_heads {
                out.push(Task {
                    row0: row0 + b,
                    rows: QUERY_BLOCK.min(rows - b),
                    kv_head,
                    first_len: first_pos + b + 1,
                    seq,
                });
            }
        }
    }
    out
}

/// Runs every task and scatters its `[rows][group][head_dim]` block and log-sum-exps into
/// the `[rows, heads * head_dim]` output.
fn run_tasks(
    tasks: &[Task],
    q: &CpuTensor,
    shape: AttentionShape,
    one: impl Fn(&Task, &mut [f32], &mut [f32]) + Sync,
) -> (CpuTensor, Vec<f32>) {
    let AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    } = shape;
    let group = num_heads / num_kv_heads;
    let blocks: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|t| {
            let mut o = vec![0f32; t.rows * group * head_dim];
            let mut l = vec![0f32; t.rows * group];
            one(t, &mut o, &mut l);
            (o, l)
        })
        .collect();
    let mut out = vec![0f32; q.rows * num_heads * head_dim];
    let mut lse = vec![0f32; q.rows * num_heads];
    for (t, (o, l)) in tasks.iter().zip(&blocks) {
        for r in 0..t.rows {
            let row = t.row0 + r;
            let head0 = t.kv_head * group;
            out[(row * num_heads + head0) * head_dim..][..group * head_dim]
                .copy_from_slice(&o[r * group * head_dim..][..group * head_dim]);
            lse[row * num_heads + head0..][..group].copy_from_slice(&l[r * group..][..group]);
        }
    }
    (CpuTensor::new(out, q.rows, num_heads * head_dim), lse)
}

pub fn paged_attention(
    q: &CpuTensor,
    k_pool: &[f32],
    v_pool: &[f32],
    layout: &KvLayout,
    batch: &ForwardBatch,
    shape: AttentionShape,
    precision: Precision,
) -> CpuTensor {
    let head_dim = shape.head_dim;
    let group = shape.num_heads / shape.num_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let bs = layout.block_size;
    let seqs = batch.seqs.iter().enumerate().map(|(s, seq)| {
        (
            s,
            seq.query_start,
            seq.query_len,
            seq.context_len - seq.query_len,
        )
    });
    let tasks = tasks(seqs, shape.num_kv_heads);
    run_tasks(&tasks, q, shape, |t, o, l| {
        let table = &batch.seqs[t.seq].block_table;
        let at = |j: usize| {
            let slot = table[j / bs] as usize * bs + j % bs;
            layout.slot_offset(slot, t.kv_head)
        };
        let block = t.queries(q, group, head_dim);
        let keys = |j: usize| &k_pool[at(j)..][..head_dim];
        let values = |j: usize| &v_pool[at(j)..][..head_dim];
        attend(&block, keys, values, scale, precision, o, l);
    })
    .0
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
    precision: Precision,
) -> (CpuTensor, Vec<f32>) {
    let head_dim = shape.head_dim;
    let group = shape.num_heads / shape.num_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let seqs = bounds
        .windows(2)
        .filter(|w| w[1] > w[0])
        .map(|w| (w[0], w[0], w[1] - w[0], 0));
    let tasks = tasks(seqs, shape.num_kv_heads);
    run_tasks(&tasks, q, shape, |t, o, l| {
        let start = t.seq;
        let kv = t.kv_head * head_dim;
        let block = t.queries(q, group, head_dim);
        let keys = |j: usize| &k.data[(start + j) * k.cols + kv..][..head_dim];
        let values = |j: usize| &v.data[(start + j) * v.cols + kv..][..head_dim];
        attend(&block, keys, values, scale, precision, o, l);
    })
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
                Precision::F32,
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
        let (o, lse) = varlen_attention(&qt, &kt, &vt, &bounds, shape, Precision::F32);
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
