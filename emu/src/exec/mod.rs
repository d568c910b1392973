//! Executing a decoded kernel: blocks in parallel, each seeing global memory as the launch
//! found it (global.rs), threads within a block under independent scheduling (thread.rs,
//! block.rs, warp.rs).

pub mod block;
pub mod counters;
pub mod float;
pub mod global;
pub mod shared;
pub mod thread;
pub mod warp;
