//! One sequence's block table: which blocks hold its tokens, grown as it lengthens.

use super::BlockAllocator;
use crate::Result;

#[derive(Debug, Clone, Default)]
pub struct SequenceBlocks {
    pub table: Vec<u32>,
    /// Tokens whose K/V are (or are about to be) stored.
    pub num_tokens: usize,
}

impl SequenceBlocks {
    /// Makes room for `extra` more tokens, allocating blocks as needed. On failure
    /// nothing is allocated, so the caller can preempt and retry.
    pub fn reserve(
        &mut self,
        alloc: &mut BlockAllocator,
        block_size: usize,
        extra: usize,
    ) -> Result<()> {
        let needed = (self.num_tokens + extra).div_ceil(block_size);
        let mut fresh = Vec::new();
        while self.table.len() + fresh.len() < needed {
            match alloc.allocate() {
                Ok(b) => fresh.push(b),
                Err(e) => {
                    for b in fresh {
                        alloc.release(b);
                    }
                    return Err(e);
                }
            }
        }
        self.table.extend(fresh);
        Ok(())
    }

    pub fn release_all(&mut self, alloc: &mut BlockAllocator) {
        for b in self.table.drain(..) {
            alloc.release(b);
        }
        self.num_tokens = 0;
    }
}
