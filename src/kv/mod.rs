//! The paged KV cache: one layout for every backend, block bookkeeping on the host.

pub mod block_allocator;
pub mod layout;
pub mod sequence;

pub use block_allocator::BlockAllocator;
pub use layout::KvLayout;
pub use sequence::SequenceBlocks;
