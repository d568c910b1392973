//! The one paged KV layout shared by every backend (see docs/kv-layout.md).
//!
//! Per layer, K and V each live in a pool of `num_blocks` blocks. A block holds
//! `block_size` consecutive token positions of one sequence for all KV heads, stored
//! head-major: `[num_blocks][num_kv_heads][block_size][head_dim]`. Head-major keeps one
//! head's keys of a block contiguous (`block_size * head_dim` elements), which is what a
//! GPU decode kernel wants to stream, and what the CPU loop walks too.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvLayout {
    /// Elements of one block (all heads) in one of K or V.
    pub fn block_elems(&self) -> usize {
        self.num_kv_heads * self.block_size * self.head_dim
    }

    /// Elements of one layer's K (or V) pool.
    pub fn layer_elems(&self) -> usize {
        self.num_blocks * self.block_elems()
    }

    /// Elements of K (or V) over all layers.
    pub fn total_elems(&self) -> usize {
        self.num_layers * self.layer_elems()
    }

    /// Offset, within one layer's pool, of `head`'s first row in `block`: the block's
    /// `block_size` positions of that head follow it as consecutive `head_dim` rows.
    #[inline]
    pub fn block_head_offset(&self, block: usize, head: usize) -> usize {
        (block * self.num_kv_heads + head) * self.block_size * self.head_dim
    }

    /// Offset, within one layer's pool, of the first element of `head` at token `slot`,
    /// where `slot = block * block_size + position_in_block` (the "slot mapping" value).
    #[inline]
    pub fn slot_offset(&self, slot: usize, head: usize) -> usize {
        let (block, within) = (slot / self.block_size, slot % self.block_size);
        self.block_head_offset(block, head) + within * self.head_dim
    }

    /// Number of blocks a budget of `bytes` buys, for K and V of every layer at
    /// `bytes_per_elem` (4 for the CPU's f32 cache, 2 for bf16 on a GPU).
    pub fn blocks_for_budget(
        bytes: usize,
        num_layers: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
        bytes_per_elem: usize,
    ) -> usize {
        let per_block = Self::block_bytes(
            num_layers,
            block_size,
            num_kv_heads,
            head_dim,
            bytes_per_elem,
        );
        bytes / per_block.max(1)
    }

    /// Bytes of one block, K and V of every layer; saturating, so an absurd `block_size`
    /// buys no blocks instead of overflowing.
    pub fn block_bytes(
        num_layers: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
        bytes_per_elem: usize,
    ) -> usize {
        [
            num_layers,
            num_kv_heads,
            block_size,
            head_dim,
            bytes_per_elem,
        ]
        .iter()
        .fold(2usize, |acc, &x| acc.saturating_mul(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_dense_and_disjoint() {
        let l = KvLayout {
            num_layers: 1,
            num_blocks: 3,
            block_size: 4,
            num_kv_heads: 2,
            head_dim: 5,
        };
        let mut seen = vec![false; l.layer_elems()];
        for slot in 0..l.num_blocks * l.block_size {
            for h in 0..l.num_kv_heads {
                let o = l.slot_offset(slot, h);
                let (b, w) = (slot / l.block_size, slot % l.block_size);
                assert_eq!(o, l.block_head_offset(b, h) + w * l.head_dim);
                for d in 0..l.head_dim {
                    assert!(!seen[o + d], "overlap at slot {slot} head {h}");
                    seen[o + d] = true;
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
    }
}
