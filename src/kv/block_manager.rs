//! Host-side bookkeeping of KV blocks: reference counts, a free list, and the prefix
//! cache that maps the hash of a full block's contents to the block holding them.
//!
//! A freed block keeps its contents and its hash until it is handed out again, so a
//! later request with the same prefix can take it back (vLLM's "evictable" blocks).
//! The free list is least-recently-freed first, so recently used prefixes live longest.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use crate::{Error, Result};

/// Hash of a full block: its tokens chained to the hash of the block before it, so equal
/// hashes mean equal whole prefixes, not just equal blocks.
pub fn block_hash(parent: Option<u64>, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: stable within a build, which is all a cache needs.
    let mut h = std::hash::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone)]
pub struct BlockManager {
    ref_counts: Vec<u32>,
    /// Blocks with no holder, oldest-freed first. Entries are (block, generation); an
    /// entry whose generation is stale was revived by a prefix hit and is skipped.
    free: VecDeque<(u32, u32)>,
    generation: Vec<u32>,
    num_free: usize,
    /// Registered content hash of each block, and the tokens, to rule out collisions.
    content: Vec<Option<(u64, Vec<u32>)>>,
    cached: HashMap<u64, u32>,
}

impl BlockManager {
    pub fn new(num_blocks: usize) -> Self {
        BlockManager {
            ref_counts: vec![0; num_blocks],
            free: (0..num_blocks as u32).map(|b| (b, 0)).collect(),
            generation: vec![0; num_blocks],
            num_free: num_blocks,
            content: vec![None; num_blocks],
            cached: HashMap::new(),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.num_free
    }

    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_counts[block as usize]
    }

    /// A block for new contents; its previous cached contents (if any) are forgotten.
    pub fn allocate(&mut self) -> Result<u32> {
        while let Some((b, generation)) = self.free.pop_front() {
            if generation != self.generation[b as usize] || self.ref_counts[b as usize] != 0 {
                continue;
            }
            if let Some((hash, _)) = self.content[b as usize].take()
                && self.cached.get(&hash) == Some(&b)
            {
                self.cached.remove(&hash);
            }
            self.ref_counts[b as usize] = 1;
            self.num_free -= 1;
            return Ok(b);
        }
        Err(Error::KvCacheFull(format!(
            "all {} blocks are in use",
            self.num_blocks()
        )))
    }

    /// Another holder of a block that already has one (a fork).
    pub fn retain(&mut self, block: u32) {
        let rc = &mut self.ref_counts[block as usize];
        assert!(*rc > 0, "retain of free block {block}");
        *rc += 1;
    }

    /// Drops one holder; with the last one the block becomes free (contents kept for
    /// prefix hits). Returns true when it became free.
    pub fn release(&mut self, block: u32) -> bool {
        let b = block as usize;
        assert!(self.ref_counts[b] > 0, "release of free block {block}");
        self.ref_counts[b] -= 1;
        if self.ref_counts[b] > 0 {
            return false;
        }
        self.generation[b] = self.generation[b].wrapping_add(1);
        self.free.push_back((block, self.generation[b]));
        self.num_free += 1;
        true
    }

    /// Records that `block` now holds the full block `tokens` with chained hash `hash`.
    pub fn register(&mut self, block: u32, hash: u64, tokens: &[u32]) {
        self.content[block as usize] = Some((hash, tokens.to_vec()));
        self.cached.entry(hash).or_insert(block);
    }

    /// The block holding `tokens` after the prefix hashed into `hash`, now held once more.
    pub fn lookup(&mut self, hash: u64, tokens: &[u32]) -> Option<u32> {
        let &b = self.cached.get(&hash)?;
        match &self.content[b as usize] {
            Some((h, t)) if *h == hash && t == tokens => {}
            _ => return None,
        }
        if self.ref_counts[b as usize] == 0 {
            // Revive: its free-list entry goes stale.
            self.generation[b as usize] = self.generation[b as usize].wrapping_add(1);
            self.num_free -= 1;
        }
        self.ref_counts[b as usize] += 1;
        Some(b)
    }

    /// Blocks whose contents are registered in the prefix cache.
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_until_full_then_reuse() {
        let mut m = BlockManager::new(2);
        let x = m.allocate().unwrap();
        let y = m.allocate().unwrap();
        assert_ne!(x, y);
        assert!(matches!(m.allocate(), Err(Error::KvCacheFull(_))));
        m.retain(x);
        assert!(!m.release(x));
        assert!(m.release(x));
        assert_eq!(m.num_free(), 1);
        assert_eq!(m.allocate().unwrap(), x);
    }

    #[test]
    fn freed_block_is_found_by_hash_until_reallocated() {
        let mut m = BlockManager::new(2);
        let b = m.allocate().unwrap();
        let h = block_hash(None, &[1, 2]);
        m.register(b, h, &[1, 2]);
        m.release(b);
        assert_eq!(m.num_free(), 2);
        assert_eq!(m.lookup(h, &[1, 2]), Some(b));
        assert_eq!(
            m.lookup(h, &[1, 3]),
            None,
            "tokens must match, not just the hash"
        );
        assert_eq!(m.num_free(), 1);
        assert_eq!(m.ref_count(b), 1, "revived with one holder");
        m.release(b);
        // Both blocks free; allocating both evicts the cached contents.
        let a1 = m.allocate().unwrap();
        let a2 = m.allocate().unwrap();
        assert!(a1 != a2 && m.num_free() == 0);
        assert_eq!(m.num_cached(), 0);
        m.release(a1);
        m.release(a2);
        assert_eq!(m.lookup(h, &[1, 2]), None);
    }
}
