//! Host-side planning of CUDA-graph decode steps, kept free of any device code so it is
//! tested on every machine: which batch sizes a graph serves (buckets), how a pure-decode
//! batch is padded up to its bucket, the one packed metadata buffer a step uploads, and the
//! fixed split-KV count of decode attention per bucket.
//!
//! A captured graph replays fixed launch shapes over fixed addresses, so a step of `n`
//! sequences runs the graph of the smallest bucket `>= n`; rows `n..bucket` are padding:
//! token 0 at position 0, context length 1 over block 0 (attention reads one real, finite
//! key and does no harm), and the slot [`SKIP_SLOT`], which the K/V write kernels skip, so
//! padding never touches the cache.

use crate::kv::KvLayout;
use crate::model::batch::{ForwardBatch, SeqChunk};

/// Batch sizes with a graph of their own.
pub const BUCKETS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// Default cap on the bucket size (vLLM's default largest capture size is 512; our largest
/// bucket is 256).
pub const DEFAULT_MAX_BUCKET: usize = 256;

/// A slot mapping entry the K/V write kernels skip (kernels/qk_norm_rope.cu): padding rows.
pub const SKIP_SLOT: u32 = u32::MAX;

/// The smallest bucket holding `n` rows, none above `max_bucket` (None: run eagerly).
pub fn bucket_for(n: usize, max_bucket: usize) -> Option<usize> {
    BUCKETS
        .iter()
        .copied()
        .find(|&b| b >= n && b <= max_bucket)
        .filter(|_| n > 0)
}

/// Block-table entries a sequence can need: the model's longest context, capped by the
/// cache (a sequence never holds more distinct blocks than the pool has).
pub fn max_pages(max_model_len: usize, layout: &KvLayout) -> usize {
    max_model_len
        .div_ceil(layout.block_size.max(1))
        .min(layout.num_blocks)
        .max(1)
}

/// Decode attention's KV split for `rows` rows when every row may read up to `max_pages`
/// pages: the eager rule (about two waves of `sm_count` SMs over rows × kv_heads × splits)
/// applied to the longest context instead of the batch's, so it is fixed per bucket.
/// Returns (splits, pages_per_split); splits past a row's context see no keys.
pub fn decode_splits(
    rows: usize,
    num_kv_heads: usize,
    sm_count: usize,
    max_pages: usize,
) -> (usize, usize) {
    let max_pages = max_pages.max(1);
    let work = (rows * num_kv_heads).max(1);
    let want = (2 * sm_count).div_ceil(work).clamp(1, max_pages);
    let pages_per_split = max_pages.div_ceil(want);
    (max_pages.div_ceil(pages_per_split), pages_per_split)
}

/// Longest KV piece one decode CTA of a graph step reads, in tokens: short enough that a
/// context of a few thousand tokens still spreads over many CTAs, as the eager rule would.
pub const GRAPH_SPLIT_TOKENS: usize = 256;

/// Cap on one bucket's split-KV partials (f32 `o` per row × head × split × head_dim).
pub const GRAPH_PARTIALS_BYTES: usize = 64 << 20;

/// Decode attention's split for a graph bucket, fixed at capture while contexts vary from
/// step to step: pieces of at most `GRAPH_SPLIT_TOKENS` (so a short context gets about as
/// many active CTAs as the eager rule gives it), unless the partials would pass
/// `GRAPH_PARTIALS_BYTES` — then as many splits as fit, never fewer than the eager rule
/// wants at the longest context. Splits past a row's context see no keys and cost one
/// early exit. Returns (splits, pages_per_split).
pub fn graph_decode_splits(
    rows: usize,
    shape: crate::backend::AttentionShape,
    block_size: usize,
    sm_count: usize,
    max_pages: usize,
) -> (usize, usize) {
    let max_pages = max_pages.max(1);
    let (eager_splits, _) = decode_splits(rows, shape.num_kv_heads, sm_count, max_pages);
    let per_split = rows.max(1) * shape.num_heads * shape.head_dim * std::mem::size_of::<f32>();
    let fit = (GRAPH_PARTIALS_BYTES / per_split.max(1)).max(eager_splits);
    let short = (GRAPH_SPLIT_TOKENS / block_size.max(1)).max(1);
    let splits = max_pages.div_ceil(short).min(fit).max(1);
    let pages_per_split = max_pages.div_ceil(splits);
    (max_pages.div_ceil(pages_per_split), pages_per_split)
}

/// Where each field sits in the packed u32 metadata of a bucket (element offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaField {
    TokenIds,
    Positions,
    Slots,
    /// Offset of each row's block table in `Tables` (row × max_pages).
    RowTable,
    /// Rows whose logits are returned: 0..bucket.
    LogitsRows,
    /// Block tables, `max_pages` entries per row, zero past a row's pages.
    Tables,
}

/// Sizes of one bucket's packed metadata: `[ids | positions | slots | row_table |
/// logits_rows | tables]`, each of `bucket` entries but the tables (`bucket × max_pages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaLayout {
    pub bucket: usize,
    pub max_pages: usize,
}

impl MetaLayout {
    pub fn range(&self, f: MetaField) -> std::ops::Range<usize> {
        let b = self.bucket;
        let (start, len) = match f {
            MetaField::TokenIds => (0, b),
            MetaField::Positions => (b, b),
            MetaField::Slots => (2 * b, b),
            MetaField::RowTable => (3 * b, b),
            MetaField::LogitsRows => (4 * b, b),
            MetaField::Tables => (5 * b, b * self.max_pages),
        };
        start..start + len
    }

    pub fn len(&self) -> usize {
        5 * self.bucket + self.bucket * self.max_pages
    }

    pub fn is_empty(&self) -> bool {
        self.bucket == 0
    }
}

/// A pure-decode step padded to its bucket: the batch the captured forward runs (ops check
/// it on the host while capturing) and the packed metadata uploaded before every replay.
#[derive(Debug, Clone)]
pub struct DecodePlan {
    /// Real rows, first `real` of `bucket`.
    pub real: usize,
    pub layout: MetaLayout,
    pub batch: ForwardBatch,
    pub meta: Vec<u32>,
}

impl DecodePlan {
    /// The padded plan of `batch`, or None when the step is not one a graph may replay:
    /// not every sequence brings exactly one token (at row = its index) wanting its logits in
    /// order, or anything the eager ops would refuse (an id outside the vocabulary, a slot or
    /// block outside the cache, a context longer than `max_pages`). None means "run it
    /// eagerly", where the ops report any such error.
    pub fn build(
        batch: &ForwardBatch,
        bucket: usize,
        max_pages: usize,
        kv: &KvLayout,
        vocab: usize,
    ) -> Option<DecodePlan> {
        let n = batch.num_tokens();
        let capacity = kv.num_blocks * kv.block_size;
        if n == 0
            || n > bucket
            || max_pages == 0
            || kv.num_blocks == 0
            || batch.seqs.len() != n
            || batch.positions.len() != n
            || batch.slot_mapping.len() != n
            || batch.logits_rows.len() != n
            || batch
                .logits_rows
                .iter()
                .enumerate()
                .any(|(i, &r)| r as usize != i)
            || batch.token_ids.iter().any(|&t| t as usize >= vocab)
            || batch.slot_mapping.iter().any(|&s| s as usize >= capacity)
        {
            return None;
        }
        let layout = MetaLayout { bucket, max_pages };
        let mut meta = vec![0u32; layout.len()];
        let mut padded = ForwardBatch::default();
        for (i, s) in batch.seqs.iter().enumerate() {
            let pages = s.context_len.div_ceil(kv.block_size);
            if s.query_start != i
                || s.query_len != 1
                || s.context_len == 0
                || batch.positions[i] as usize + 1 != s.context_len
                || pages > max_pages
                || s.block_table.len() < pages
                || s.block_table[..pages]
                    .iter()
                    .any(|&b| b as usize >= kv.num_blocks)
            {
                return None;
            }
            let t = layout.range(MetaField::Tables).start + i * max_pages;
            meta[t..t + pages].copy_from_slice(&s.block_table[..pages]);
        }
        padded.token_ids = batch.token_ids.clone();
        padded.positions = batch.positions.clone();
        padded.slot_mapping = batch.slot_mapping.clone();
        padded.seqs = batch.seqs.clone();
        for r in n..bucket {
            padded.token_ids.push(0);
            padded.positions.push(0);
            padded.slot_mapping.push(SKIP_SLOT);
            padded.seqs.push(SeqChunk {
                query_start: r,
                query_len: 1,
                context_len: 1,
                block_table: vec![0],
            });
        }
        padded.logits_rows = (0..bucket as u32).collect();
        let mut put = |f: MetaField, v: &[u32]| meta[layout.range(f)].copy_from_slice(v);
        put(MetaField::TokenIds, &padded.token_ids);
        put(MetaField::Positions, &padded.positions);
        put(MetaField::Slots, &padded.slot_mapping);
        let row_table: Vec<u32> = (0..bucket).map(|r| (r * max_pages) as u32).collect();
        put(MetaField::RowTable, &row_table);
        put(MetaField::LogitsRows, &padded.logits_rows);
        Some(DecodePlan {
            real: n,
            layout,
            batch: padded,
            meta,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::batch::Logits;

    fn kv(num_blocks: usize, block_size: usize) -> KvLayout {
        KvLayout {
            num_layers: 2,
            num_blocks,
            block_size,
            num_kv_heads: 2,
            head_dim: 8,
        }
    }

    /// Sequences with `cached` tokens each decoding one more, tables from `tables`.
    fn decode_batch(steps: &[(u32, usize, &[u32])], bs: usize) -> ForwardBatch {
        let mut b = ForwardBatch::default();
        for &(tok, cached, table) in steps {
            b.push(&[tok], cached, table, bs, Logits::Last);
        }
        b
    }

    #[test]
    fn buckets_are_the_smallest_power_of_two_at_or_above_and_respect_the_cap() {
        let want = [
            (1, Some(1)),
            (2, Some(2)),
            (3, Some(4)),
            (4, Some(4)),
            (5, Some(8)),
            (8, Some(8)),
            (9, Some(16)),
            (17, Some(32)),
            (33, Some(64)),
            (65, Some(128)),
            (129, Some(256)),
            (256, Some(256)),
            (257, None),
            (0, None),
        ];
        for (n, b) in want {
            assert_eq!(bucket_for(n, DEFAULT_MAX_BUCKET), b, "n = {n}");
        }
        assert_eq!(bucket_for(9, 8), None);
        assert_eq!(bucket_for(8, 8), Some(8));
        assert_eq!(bucket_for(3, 3), None, "a cap between buckets rounds down");
        assert_eq!(bucket_for(2, 3), Some(2));
    }

    #[test]
    fn max_pages_is_the_longest_context_capped_by_the_pool() {
        assert_eq!(max_pages(40960, &kv(100_000, 16)), 2560);
        assert_eq!(max_pages(40960, &kv(64, 16)), 64);
        assert_eq!(max_pages(33, &kv(64, 16)), 3);
    }

    #[test]
    fn splits_are_fixed_by_the_longest_context_and_cover_it() {
        // Qwen3-0.6B on an H200: 8 KV heads, 132 SMs, 2560 pages.
        let (s, pps) = decode_splits(1, 8, 132, 2560);
        assert_eq!((s, pps), (33, 78));
        assert!(s * pps >= 2560 && (s - 1) * pps < 2560);
        // Many rows: one split.
        assert_eq!(decode_splits(256, 8, 132, 2560), (1, 2560));
        // Never more splits than pages.
        assert_eq!(decode_splits(1, 1, 132, 3), (3, 1));
        for rows in BUCKETS {
            let (s, pps) = decode_splits(rows, 4, 80, 700);
            assert!(
                s >= 1 && s * pps >= 700 && (s - 1) * pps < 700,
                "rows {rows}"
            );
        }
    }

    #[test]
    fn graph_splits_stay_short_for_small_buckets_and_fit_memory_for_large_ones() {
        // Qwen3-0.6B on an H200: 16 heads, 8 KV heads, head_dim 128, 40960 tokens.
        let shape = crate::backend::AttentionShape {
            num_heads: 16,
            num_kv_heads: 8,
            head_dim: 128,
        };
        let (s, pps) = graph_decode_splits(1, shape, 16, 132, 2560);
        assert_eq!(
            pps * 16,
            GRAPH_SPLIT_TOKENS,
            "bucket 1 reads 256-token pieces"
        );
        assert_eq!(s, 160);
        // A 4k-token context then runs on 16 splits × 8 KV heads, about one wave.
        assert_eq!(4096usize.div_ceil(pps * 16), 16);
        for rows in BUCKETS {
            let (s, pps) = graph_decode_splits(rows, shape, 16, 132, 2560);
            assert!(
                s * pps >= 2560 && (s - 1) * pps < 2560,
                "rows {rows}: covers"
            );
            let bytes = rows * 16 * 128 * 4 * s;
            let eager = decode_splits(rows, 8, 132, 2560).0;
            assert!(
                bytes <= GRAPH_PARTIALS_BYTES || s <= eager,
                "rows {rows}: {bytes} bytes of partials"
            );
            assert!(
                s >= eager.min(160),
                "rows {rows}: {s} splits < eager {eager}"
            );
        }
    }

    #[test]
    fn padding_fills_the_bucket_with_harmless_rows_and_packs_every_field() {
        let bs = 4;
        let layout = kv(16, bs);
        // Three sequences at contexts 1, 6 and 9 (tables longer than needed are cut).
        let batch = decode_batch(
            &[(7, 0, &[5, 9]), (8, 5, &[1, 2, 3]), (9, 8, &[4, 6, 11, 12])],
            bs,
        );
        let plan = DecodePlan::build(&batch, 4, 4, &layout, 100).unwrap();
        assert_eq!(plan.real, 3);
        let p = &plan.batch;
        assert_eq!(p.token_ids, [7, 8, 9, 0]);
        assert_eq!(p.positions, [0, 5, 8, 0]);
        assert_eq!(p.slot_mapping, [20, 9, 44, SKIP_SLOT]);
        assert_eq!(p.logits_rows, [0, 1, 2, 3]);
        assert_eq!(p.seqs.len(), 4);
        assert_eq!(p.seqs[..3], batch.seqs[..]);
        assert_eq!(
            p.seqs[3],
            SeqChunk {
                query_start: 3,
                query_len: 1,
                context_len: 1,
                block_table: vec![0]
            }
        );
        let l = plan.layout;
        assert_eq!(plan.meta.len(), 5 * 4 + 4 * 4);
        let f = |m| &plan.meta[l.range(m)];
        assert_eq!(f(MetaField::TokenIds), p.token_ids);
        assert_eq!(f(MetaField::Positions), p.positions);
        assert_eq!(f(MetaField::Slots), p.slot_mapping);
        assert_eq!(f(MetaField::RowTable), [0, 4, 8, 12]);
        assert_eq!(f(MetaField::LogitsRows), [0, 1, 2, 3]);
        #[rustfmt::skip]
        assert_eq!(f(MetaField::Tables), [
            5, 0, 0, 0, // context 1: one page
            1, 2, 0, 0, // context 6: two pages
            4, 6, 11, 0, // context 9: three pages
            0, 0, 0, 0, // padding: block 0
        ]);
        // An exact fit has no padding.
        let plan = DecodePlan::build(&batch, 3, 4, &layout, 100);
        assert!(plan.is_some_and(|p| p.batch.token_ids.len() == 3));
    }

    #[test]
    fn steps_a_graph_cannot_replay_are_refused() {
        let bs = 4;
        let layout = kv(16, bs);
        let ok = decode_batch(&[(7, 0, &[5]), (8, 5, &[1, 2])], bs);
        assert!(DecodePlan::build(&ok, 2, 4, &layout, 100).is_some());
        // Too many rows for the bucket.
        assert!(DecodePlan::build(&ok, 1, 4, &layout, 100).is_none());
        // A prefill chunk.
        let mut prefill = ForwardBatch::default();
        prefill.push(&[1, 2], 0, &[3], bs, Logits::Last);
        assert!(DecodePlan::build(&prefill, 2, 4, &layout, 100).is_none());
        // A decode row that wants no logits, or every position's.
        let mut none = ForwardBatch::default();
        none.push(&[1], 0, &[3], bs, Logits::None);
        assert!(DecodePlan::build(&none, 1, 4, &layout, 100).is_none());
        // Token outside the vocabulary.
        assert!(DecodePlan::build(&ok, 2, 4, &layout, 8).is_none());
        // Context beyond the fixed table width.
        let long = decode_batch(&[(1, 16, &[1, 2, 3, 4, 5])], bs);
        assert!(DecodePlan::build(&long, 1, 4, &layout, 100).is_none());
        assert!(DecodePlan::build(&long, 1, 5, &layout, 100).is_some());
        // A block outside the pool, or a table too short for the context.
        let bad = decode_batch(&[(1, 0, &[16])], bs);
        assert!(DecodePlan::build(&bad, 1, 4, &layout, 100).is_none());
        let mut short = decode_batch(&[(1, 4, &[1, 2])], bs);
        short.seqs[0].block_table.truncate(1);
        assert!(DecodePlan::build(&short, 1, 4, &layout, 100).is_none());
        // Position not at the end of its context.
        let mut skew = ok.clone();
        skew.positions[1] = 3;
        assert!(DecodePlan::build(&skew, 2, 4, &layout, 100).is_none());
        // Sequences out of row order.
        let mut swapped = ok.clone();
        swapped.seqs.swap(0, 1);
        assert!(DecodePlan::build(&swapped, 2, 4, &layout, 100).is_none());
    }
}
