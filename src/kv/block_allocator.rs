//! Host-side bookkeeping of KV blocks: a free list and a reference count per block.
//! Backends own the memory; this decides which block holds what. Shared prefixes and
//! forked sequences hold the same block with a count above one.

use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct BlockAllocator {
    ref_counts: Vec<u32>,
    free: Vec<u32>,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize) -> Self {
        // Pop from the end, so hand out low block ids first: easier to read in dumps.
        let free = (0..num_blocks as u32).rev().collect();
        BlockAllocator {
            ref_counts: vec![0; num_blocks],
            free,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn allocate(&mut self) -> Result<u32> {
        let b = self.free.pop().ok_or_else(|| {
            Error::KvCacheFull(format!("all {} blocks are in use", self.ref_counts.len()))
        })?;
        self.ref_counts[b as usize] = 1;
        Ok(b)
    }

    /// Another holder of an allocated block (a fork, a prefix-cache hit).
    pub fn retain(&mut self, block: u32) {
        let rc = &mut self.ref_counts[block as usize];
        assert!(*rc > 0, "retain of free block {block}");
        *rc += 1;
    }

    /// Drops one holder; the block returns to the free list with its last holder.
    /// Returns true when the block became free.
    pub fn release(&mut self, block: u32) -> bool {
        let rc = &mut self.ref_counts[block as usize];
        assert!(*rc > 0, "release of free block {block}");
        *rc -= 1;
        if *rc == 0 {
            self.free.push(block);
            true
        } else {
            false
        }
    }

    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_counts[block as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_until_full_then_reuse() {
        let mut a = BlockAllocator::new(2);
        let x = a.allocate().unwrap();
        let y = a.allocate().unwrap();
        assert_ne!(x, y);
        assert!(matches!(a.allocate(), Err(Error::KvCacheFull(_))));
        a.retain(x);
        assert!(!a.release(x));
        assert!(a.release(x));
        assert_eq!(a.allocate().unwrap(), x);
    }
}
