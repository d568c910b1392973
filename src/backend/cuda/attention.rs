//! Host side of paged attention: checks the batch against the cache, builds the per-row or
//! per-tile metadata the kernels read, and picks the kernel: the split-KV decode kernel when
//! every sequence brings one new token, the tensor-core prefill kernel otherwise (it handles
//! any mix, including decode rows, at the cost of partly empty tiles).

use cudarc::driver::PushKernelArg;

use super::device::{CudaBackend, cuda_err, grid};
use super::graphs::MetaArg;
use super::ops::{CudaKvCache, CudaTensor, check_layer, launch_err, shape_err};
use crate::Result;
use crate::backend::AttentionShape;
use crate::backend::decode_graph::{MetaField, decode_splits};
use crate::model::batch::ForwardBatch;

/// Kernel limits (kernels/attention_*.cu): head_dim up to 128, GQA groups up to 8 in decode.
pub(super) const MAX_HEAD_DIM: usize = 128;
pub(super) const MAX_DECODE_GROUP: usize = 8;

/// The decode kernel sized for a GQA group (kernels/attention_decode.cu): its registers hold
/// G = 1, 2, 4 or 8 heads, the smallest that fits `group` (heads past `group` are skipped).
fn decode_kernel(group: usize) -> Option<&'static str> {
    match group {
        1 => Some("attention_decode_g1"),
        2 => Some("attention_decode_g2"),
        3..=4 => Some("attention_decode_g4"),
        5..=MAX_DECODE_GROUP => Some("attention_decode_g8"),
        _ => None,
    }
}
/// M rows of a prefill CTA (PF_M in kernels/attention_prefill.cu): query rows × packed heads.
const PREFILL_M: usize = 64;
/// At most this many query heads of a GQA group share a prefill CTA (and its K/V tiles).
const MAX_PREFILL_PACK: usize = 8;

pub fn paged_attention(
    be: &CudaBackend,
    q: &CudaTensor,
    cache: &CudaKvCache,
    layer: usize,
    batch: &ForwardBatch,
    shape: AttentionShape,
) -> Result<CudaTensor> {
    let l = cache.layout;
    let AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    } = shape;
    check_layer(&l, layer)?;
    if num_kv_heads == 0
        || num_heads % num_kv_heads != 0
        || head_dim > MAX_HEAD_DIM
        || (num_kv_heads, head_dim) != (l.num_kv_heads, l.head_dim)
        || q.cols != num_heads * head_dim
        || q.rows != batch.num_tokens()
        || batch.positions.len() != q.rows
    {
        return Err(shape_err(
            "attention",
            format!(
                "q {}x{} for {} tokens, {shape:?} vs cache {l:?} (head_dim <= {MAX_HEAD_DIM})",
                q.rows,
                q.cols,
                batch.num_tokens()
            ),
        ));
    }
    // Flattened block tables; every page a sequence reads must exist in the pool.
    let mut tables = Vec::new();
    let mut table_off = Vec::with_capacity(batch.seqs.len());
    let mut max_pages = 1;
    for s in &batch.seqs {
        let pages = s.context_len.div_ceil(l.block_size);
        if s.block_table.len() < pages
            || s.block_table[..pages]
                .iter()
                .any(|&b| b as usize >= l.num_blocks)
            || s.query_len > s.context_len
            || s.query_start + s.query_len > q.rows
        {
            return Err(shape_err(
                "attention",
                format!(
                    "sequence at row {} (context {}, {} table entries) does not fit the cache",
                    s.query_start,
                    s.context_len,
                    s.block_table.len()
                ),
            ));
        }
        table_off.push(tables.len() as u32);
        tables.extend_from_slice(&s.block_table[..pages]);
        max_pages = max_pages.max(pages);
    }
    let mut out = CudaTensor {
        data: be.alloc_bf16(q.rows * q.cols)?,
        rows: q.rows,
        cols: q.cols,
    };
    if q.rows == 0 {
        return Ok(out);
    }
    tables.push(0); // never empty: a zero-length device buffer cannot be allocated
    let layer_off = (layer * l.layer_elems()) as u64;
    let (nh, nkv, hd, bs) = (
        num_heads as i32,
        num_kv_heads as i32,
        head_dim as i32,
        l.block_size as i32,
    );
    let scale = 1.0 / (head_dim as f32).sqrt();
    let group = num_heads / num_kv_heads;
    let all_decode = batch.seqs.iter().all(|s| s.query_len == 1);

    if let (true, Some(decode_name)) = (all_decode, decode_kernel(group)) {
        let (splits, pages_per_split, tables_d, row_table_d) = match be.fixed_decode_split(q.rows) {
            // A CUDA-graph step: the split is fixed per bucket by the longest context
            // (splits past a row's context see no keys), and the tables are the bucket's
            // persistent ones, `width` entries per row.
            Some((splits, pages_per_split, width)) if max_pages <= width => {
                let mut padded = vec![0u32; q.rows * width];
                for seq in &batch.seqs {
                    let pages = seq.context_len.div_ceil(l.block_size);
                    padded[seq.query_start * width..][..pages]
                        .copy_from_slice(&seq.block_table[..pages]);
                }
                let row_table: Vec<u32> = (0..q.rows).map(|r| (r * width) as u32).collect();
                (
                    splits,
                    pages_per_split,
                    be.meta_arg(MetaField::Tables, &padded)?,
                    be.meta_arg(MetaField::RowTable, &row_table)?,
                )
            }
            _ => {
                if be.capturing() {
                    return Err(cuda_err(
                        "decode attention inside a graph capture without the bucket's split",
                    ));
                }
                // Split the KV range so rows × kv_heads × splits fills about two waves of the GPU.
                let (splits, pages_per_split) =
                    decode_splits(q.rows, num_kv_heads, be.inner.sm_count, max_pages);
                let mut row_table = vec![0u32; q.rows];
                for (s, seq) in batch.seqs.iter().enumerate() {
                    row_table[seq.query_start] = table_off[s];
                }
                (
                    splits,
                    pages_per_split,
                    MetaArg::Uploaded(be.upload(&tables)?),
                    MetaArg::Uploaded(be.upload(&row_table)?),
                )
            }
        };
        let (tables_p, row_table_p) = (tables_d.ptr(be), row_table_d.ptr(be));
        let pos_d = be.meta_arg(MetaField::Positions, &batch.positions)?;
        let pos_p = pos_d.ptr(be);
        let heads = q.rows * num_heads;
        let mut part_o = be.alloc_f32(heads * splits * head_dim)?;
        let mut part_ml = be.alloc_f32(heads * splits * 2)?;
        let pps = pages_per_split as i32;
        let mut b = be.stream().launch_builder(be.func(decode_name)?);
        b.arg(&q.data).arg(&cache.k).arg(&cache.v).arg(&layer_off);
        b.arg(&pos_p).arg(&row_table_p).arg(&tables_p);
        b.arg(&mut part_o).arg(&mut part_ml);
        b.arg(&nh).arg(&nkv).arg(&hd).arg(&bs).arg(&pps).arg(&scale);
        // SAFETY: every row's positions lie inside its table (checked above), the tables'
        // pages inside the pool; part_o/part_ml hold rows × heads × splits entries; the
        // kernel's G (decode_kernel) is at least the group, head_dim <= 128 (checked above).
        unsafe { b.launch(grid(q.rows, num_kv_heads, splits, 128)) }
            .map_err(launch_err(decode_name))?;
        let splits_i = splits as i32;
        let mut b = be
            .stream()
            .launch_builder(be.func("attention_decode_reduce")?);
        b.arg(&part_o).arg(&part_ml).arg(&mut out.data);
        b.arg(&nh).arg(&hd).arg(&splits_i);
        // SAFETY: reads the partials written above; writes rows × num_heads × head_dim.
        unsafe { b.launch(grid(q.rows, num_heads, 1, 128)) }
            .map_err(launch_err("attention_decode_reduce"))?;
        return Ok(out);
    }

    // Prefill: `pack` heads of a group share each CTA (it divides the group, so they share one
    // KV head), leaving PREFILL_M / pack query rows per tile.
    let pack = (1..=MAX_PREFILL_PACK.min(group))
        .rev()
        .find(|p| group % p == 0)
        .unwrap_or(1);
    let rows_per_tile = PREFILL_M / pack;
    // Tiles {first row, rows, position of the first row, table offset}, the ones reading the
    // most keys first so that the long CTAs do not start last.
    let mut tiles: Vec<[u32; 4]> = Vec::new();
    for (s, seq) in batch.seqs.iter().enumerate() {
        let first_pos = seq.context_len - seq.query_len;
        for t in (0..seq.query_len).step_by(rows_per_tile) {
            tiles.push([
                (seq.query_start + t) as u32,
                rows_per_tile.min(seq.query_len - t) as u32,
                (first_pos + t) as u32,
                table_off[s],
            ]);
        }
    }
    if tiles.is_empty() {
        return Ok(out);
    }
    tiles.sort_by_key(|t| std::cmp::Reverse(t[1] + t[2]));
    let tables_d = be.upload(&tables)?;
    let n_tiles = tiles.len();
    let tiles_d = be.upload(&tiles.concat())?;
    let name = if head_dim <= 64 {
        "attention_prefill_d64"
    } else {
        "attention_prefill_d128"
    };
    let pack_i = pack as i32;
    let mut b = be.stream().launch_builder(be.func(name)?);
    b.arg(&q.data).arg(&cache.k).arg(&cache.v).arg(&layer_off);
    b.arg(&tiles_d).arg(&tables_d).arg(&mut out.data);
    b.arg(&nh).arg(&nkv).arg(&hd).arg(&bs);
    b.arg(&pack_i).arg(&scale);
    // SAFETY: tiles cover rows inside q (checked: query_start + query_len <= rows) and keys
    // inside each sequence's table; `pack` divides num_heads / num_kv_heads, so the grid's
    // heads stay inside num_heads; out holds rows × num_heads × head_dim.
    unsafe { b.launch(grid(n_tiles, num_heads / pack, 1, 128)) }.map_err(launch_err(name))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::compile::KERNELS;

    #[test]
    fn every_decode_group_has_a_registered_kernel_that_holds_it() {
        let registered: Vec<&str> = KERNELS.iter().flat_map(|k| k.functions).copied().collect();
        for group in 1..=MAX_DECODE_GROUP {
            let name = decode_kernel(group).unwrap();
            let g: usize = name
                .strip_prefix("attention_decode_g")
                .unwrap()
                .parse()
                .unwrap();
            assert!(g >= group && g < 2 * group, "group {group} -> {name}");
            assert!(registered.contains(&name), "{name} not in KERNELS");
        }
        assert_eq!(decode_kernel(0), None);
        assert_eq!(decode_kernel(MAX_DECODE_GROUP + 1), None);
    }
}
