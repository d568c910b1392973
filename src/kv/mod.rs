//! The paged KV cache: one layout for every backend, block bookkeeping on the host.

pub mod block_manager;
pub mod layout;

pub use block_manager::{BlockManager, block_hash};
pub use layout::KvLayout;
