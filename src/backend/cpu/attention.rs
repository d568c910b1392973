//! Causal GQA attention over the paged cache. Each new token of a sequence attends to
//! every cached position up to its own, reading K/V block by block through the
//! sequence's block table: exactly what the CUDA kernels compute, in plain loops.

use rayon::prelude::*;

use super::CpuTensor;
use super::dot::dot;
use crate::backend::AttentionShape;
use crate::kv::KvLayout;
use crate::model::batch::ForwardBatch;

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
            let scores: Vec<f32> = (0..=pos)
                .map(|j| {
                    let off = layout.slot_offset(slot(j), kv_head);
                    dot(qv, &k_pool[off..off + head_dim]) * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let weights: Vec<f32> = scores.iter().map(|&x| (x - max).exp()).collect();
            let denom: f32 = weights.iter().sum();
            o.fill(0.0);
            for (j, &w) in weights.iter().enumerate() {
                let off = layout.slot_offset(slot(j), kv_head);
                for (acc, &v) in o.iter_mut().zip(&v_pool[off..off + head_dim]) {
                    *acc += w * v;
                }
            }
            let inv = 1.0 / denom;
            o.iter_mut().for_each(|x| *x *= inv);
        });
    CpuTensor::new(out, q.rows, num_heads * head_dim)
}
