//! Executing a decoded kernel: launch checks, blocks one after another, threads within a
//! block under independent scheduling (thread.rs, block.rs, warp.rs).

pub mod block;
pub mod counters;
pub mod float;
pub mod shared;
pub mod thread;
pub mod warp;
