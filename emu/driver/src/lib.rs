//! `libcuda.so` and `libcublas.so` over the PTX emulator: with this library first on
//! `LD_LIBRARY_PATH` (as `libcuda.so.1` and `libcublas.so.13`, links to one file so both
//! APIs share one device), the unchanged `CudaBackend` and `tests/cuda_*.rs` run on the CPU.
//! Only the entry points cudarc 0.19 and our backend call are implemented; cudarc resolves
//! each by name when first called. docs/emulator.md lists them.

// The exports are C entry points called through the CUDA API's contract (cudarc's dlsym'd
// pointers), not Rust functions: each checks its pointers for null and documents the rest.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod cublas;
pub mod driver;
pub mod state;
