//! A PTX-level GPU emulator scoped to what asyncthink's kernels use.
//!
//! It parses the PTX NVRTC emits for kernels/*.cu and runs grids on the CPU: every thread
//! has its own program counter and registers (Volta+ independent thread scheduling); warp
//! collectives rendezvous the lanes that take part; and it checks what a GPU does not:
//! every global access against live allocations, shared memory against the block's size,
//! shared-memory races between barriers, `cp.async` data read before its wait, launch
//! limits. See docs/emulator.md.

pub mod device;
pub mod error;
pub mod exec;
pub mod memory;
pub mod ptx;

pub use device::{Arg, Device, LaunchConfig, LaunchStats, Module};
pub use error::{EmuError, Result};
