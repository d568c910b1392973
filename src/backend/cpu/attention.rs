//! Causal GQA attention over the paged cache. Each new token of a sequence attends to
//! every cached position up to its own, reading K/V block by block through the
//! sequence's block table: exactly what the CUDA kernels compute, in plain loops.

use rayon::prelude::*;

use super::attention_kernels::{
    KEY_STEP, QUERY_LANES, VALUE_QUERIES, WIDE_LANES, scores, scores_wide, softmax_numerators,
    weighted_values_1, weighted_values_8, weighted_values_32,
};
use super::dot::dot;
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

/// A query block against its keys and values (`key_rows[j]`: position j's): the arithmetic every
/// attention path shares. Each query's numbers are one fixed sequence of operations
/// (`attention_kernels.rs` says which): its scores in key order, their max, the
/// exponentials summed in key order, the values weighted and added in key order, one
/// scale by the inverse sum. The block only decides which queries share registers and
/// K/V loads, so a token's output is bitwise the same from the paged cache (decode,
/// prefill, chunked prefill, recomputation after preemption) or the trainer's packed
/// batch, alone or with any neighbours. Writes `[rows][group][head_dim]` into `out` and
/// each query's log-sum-exp of scaled scores (what the backward recomputes the
/// probabilities from) into `lse`. At bf16 precision the exponentials are rounded to
/// bf16 after their sum and before they weight the values, as torch's CPU flash
/// attention feeds its bf16 product with V.
///
/// Exact softmax over the block's whole context, not an online one: the block's
/// probabilities are `rows · group · context` floats (256 KiB for 16 rows of two heads at
/// 2 048 positions), which stays in cache where an online softmax would rescale.
#[inline]
fn attend<'a, Q: Fn(usize, usize) -> &'a [f32]>(
    block: &QueryBlock<Q>,
    key_rows: &[&[f32]],
    value_rows: &[&[f32]],
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
    let n = rows * group;
    // Query i = row · group + head; its row sees this many keys.
    let len = |i: usize| first_len + i / group;
    let head_dim = out.len() / n;
    let keys = len(n - 1);
    let stride = n.div_ceil(QUERY_LANES) * QUERY_LANES;

    // Queries element-major, one lane each: qt[d · stride + i].
    let mut qt = vec![0f32; head_dim * stride];
    for i in 0..n {
        for (d, &x) in (block.q)(i / group, i % group).iter().enumerate() {
            qt[d * stride + i] = x;
        }
    }
    // p[j · stride + i]: query i's scaled score of key j, later its probability.
    let mut p = vec![0f32; keys * stride];
    for j0 in (0..keys).step_by(KEY_STEP) {
        let taken = KEY_STEP.min(keys - j0);
        // A short last step repeats its last key into lanes that are then dropped.
        let step: [&[f32]; KEY_STEP] = std::array::from_fn(|b| key_rows[j0 + b.min(taken - 1)]);
        let mut v = 0;
        while v < stride {
            let mut put = |b: usize, lanes: &[f32]| {
                let row = &mut p[(j0 + b) * stride + v..][..lanes.len()];
                row.iter_mut().zip(lanes).for_each(|(s, &a)| *s = a * scale);
            };
            if stride - v >= WIDE_LANES {
                let acc = scores_wide(&qt[v..], stride, &step, head_dim);
                acc.iter()
                    .take(taken)
                    .enumerate()
                    .for_each(|(b, l)| put(b, l));
                v += WIDE_LANES;
            } else {
                let acc = scores(&qt[v..], stride, &step, head_dim);
                acc.iter()
                    .take(taken)
                    .enumerate()
                    .for_each(|(b, l)| put(b, l));
                v += QUERY_LANES;
            }
        }
    }
    for i in 0..n {
        for j in len(i)..keys {
            p[j * stride + i] = f32::NEG_INFINITY;
        }
    }

    let mut max = vec![f32::NEG_INFINITY; stride];
    for row in p.chunks(stride) {
        max.iter_mut().zip(row).for_each(|(m, &x)| *m = m.max(x));
    }
    let mut sum = vec![0f32; stride];
    softmax_numerators(&mut p, &max, &mut sum, precision == Precision::Bf16);
    for i in 0..n {
        lse[i] = max[i] + sum[i].ln();
    }

    let weigh = Weigh {
        p: &p,
        stride,
        values: value_rows,
        sum: &sum,
        head_dim,
    };
    for i0 in (0..n).step_by(VALUE_QUERIES) {
        let m = VALUE_QUERIES.min(n - i0);
        let lens: [usize; VALUE_QUERIES] = std::array::from_fn(|q| len(i0 + q.min(m - 1)));
        let mut d0 = 0;
        while d0 < head_dim {
            d0 += match head_dim - d0 {
                32.. => weigh.run::<32>(weighted_values_32, i0, m, lens, d0, out),
                8.. => weigh.run::<8>(weighted_values_8, i0, m, lens, d0, out),
                _ => weigh.run::<1>(weighted_values_1, i0, m, lens, d0, out),
            };
        }
    }
}

type WeightedValues<const W: usize> = fn(
    &[f32],
    usize,
    &[usize; VALUE_QUERIES],
    usize,
    std::ops::Range<usize>,
    &[&[f32]],
    usize,
    &mut [[f32; W]; VALUE_QUERIES],
);

/// The probability-weighted values of one query block, `VALUE_QUERIES` queries and `W`
/// output elements at a time.
struct Weigh<'a> {
    p: &'a [f32],
    stride: usize,
    values: &'a [&'a [f32]],
    sum: &'a [f32],
    head_dim: usize,
}

impl Weigh<'_> {
    /// Output elements `d0..d0 + W` of queries `i0..i0 + m`, whose key counts `lens` do
    /// not decrease. The queries go to the kernel last first, so the ones that still
    /// have keys left are always its first `active`: all m share keys `0..lens[0]`,
    /// then each later query adds its few extra ones. Returns W.
    fn run<const W: usize>(
        &self,
        kernel: WeightedValues<W>,
        i0: usize,
        m: usize,
        lens: [usize; VALUE_QUERIES],
        d0: usize,
        out: &mut [f32],
    ) -> usize {
        let lanes: [usize; VALUE_QUERIES] = std::array::from_fn(|k| i0 + (m - 1).saturating_sub(k));
        let mut acc = [[0f32; W]; VALUE_QUERIES];
        let mut from = 0;
        for (q, &to) in lens.iter().enumerate().take(m) {
            if to > from {
                let range = from..to;
                kernel(
                    self.p,
                    self.stride,
                    &lanes,
                    m - q,
                    range,
                    self.values,
                    d0,
                    &mut acc,
                );
                from = to;
            }
        }
        for (k, a) in acc.iter().enumerate().take(m) {
            let i = lanes[k];
            let inv = 1.0 / self.sum[i];
            let o = &mut out[i * self.head_dim + d0..][..W];
            o.iter_mut().zip(a).for_each(|(o, &x)| *o = x * inv);
        }
        W
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
        let keys = t.first_len + t.rows - 1;
        let offsets: Vec<usize> = batch.seqs[t.seq].block_table[..keys.div_ceil(bs)]
            .iter()
            .flat_map(|&b| {
                let first = layout.block_head_offset(b as usize, t.kv_head);
                (0..bs).map(move |w| first + w * head_dim)
            })
            .take(keys)
            .collect();
        let key_rows: Vec<&[f32]> = offsets.iter().map(|&a| &k_pool[a..][..head_dim]).collect();
        let value_rows: Vec<&[f32]> = offsets.iter().map(|&a| &v_pool[a..][..head_dim]).collect();
        let block = t.queries(q, group, head_dim);
        attend(&block, &key_rows, &value_rows, scale, precision, o, l);
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
        let keys = t.first_len + t.rows - 1;
        let (key_rows, value_rows) = (
            head_rows(k, start, keys, kv, head_dim),
            head_rows(v, start, keys, kv, head_dim),
        );
        attend(&block, &key_rows, &value_rows, scale, precision, o, l);
    })
}

/// Rows `start..start + n` of `m`, each cut to the `head_dim` columns from `col`.
fn head_rows(m: &CpuTensor, start: usize, n: usize, col: usize, head_dim: usize) -> Vec<&[f32]> {
    m.data[start * m.cols..]
        .chunks(m.cols)
        .take(n)
        .map(|r| &r[col..][..head_dim])
        .collect()
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

    /// One query row at a time (decode), a block of 16 (prefill) and the odd remainders
    /// give every query the same bits, at both precisions, and match an f64 softmax: on
    /// Qwen3-0.6B's head shape (head_dim 128, two query heads per KV head) and on shapes
    /// that take the 8- and 1-wide value tails and other group sizes.
    #[test]
    fn a_query_gets_the_same_bits_alone_or_in_any_block() {
        for (group, head_dim) in [(2, 128), (3, 72), (1, 20)] {
            same_bits_in_any_block(group, head_dim);
        }
    }

    fn same_bits_in_any_block(group: usize, head_dim: usize) {
        let n = 37;
        let q = rand_vec(n * group * head_dim, 11);
        let k = rand_vec(n * head_dim, 12);
        let v = rand_vec(n * head_dim, 13);
        let key_rows: Vec<&[f32]> = k.chunks(head_dim).collect();
        let value_rows: Vec<&[f32]> = v.chunks(head_dim).collect();
        let scale = 1.0 / (head_dim as f32).sqrt();
        let run = |row0: usize, rows: usize, precision: Precision| {
            let block = QueryBlock {
                q: |r: usize, g: usize| &q[((row0 + r) * group + g) * head_dim..][..head_dim],
                rows,
                group,
                first_len: row0 + 1,
            };
            let mut out = vec![0f32; rows * group * head_dim];
            let mut lse = vec![0f32; rows * group];
            let keys = row0 + rows;
            attend(
                &block,
                &key_rows[..keys],
                &value_rows[..keys],
                scale,
                precision,
                &mut out,
                &mut lse,
            );
            (out, lse)
        };
        for precision in [Precision::F32, Precision::Bf16] {
            let (whole, whole_lse) = run(0, n, precision);
            for (row0, rows) in [(0, 16), (16, 16), (32, 5), (7, 1), (36, 1), (3, 9)] {
                let (part, lse) = run(row0, rows, precision);
                let span = row0 * group * head_dim..(row0 + rows) * group * head_dim;
                let at =
                    format!("group {group} head_dim {head_dim} {precision:?} rows {row0}+{rows}");
                assert_eq!(part, whole[span], "{at}");
                assert_eq!(lse, whole_lse[row0 * group..(row0 + rows) * group]);
            }
        }
        let (out, _) = run(0, n, Precision::F32);
        for (i, o) in out.chunks(head_dim).enumerate() {
            let (row, qi) = (i / group, &q[i * head_dim..][..head_dim]);
            let s: Vec<f64> = (0..=row)
                .map(|j| {
                    let d: f64 = qi
                        .iter()
                        .zip(key_rows[j])
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum();
                    d * scale as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = w.iter().sum();
            for (d, &got) in o.iter().enumerate() {
                let want: f64 = (0..=row)
                    .map(|j| w[j] * value_rows[j][d] as f64)
                    .sum::<f64>()
                    / z;
                let at = format!("group {group} head_dim {head_dim} query {i} elem {d}");
                assert!((got as f64 - want).abs() < 1e-5, "{at}");
            }
        }
    }

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
