//! The CUDA backend: bf16 activations and KV cache on the device, cuBLAS for the dense
//! projections, our kernels (kernels/*.cu, compiled at run time by NVRTC) for the rest.
//! Every CUDA library is loaded at run time, so this builds and links with no CUDA
//! installed; `CudaBackend::new` reports a missing driver or device as an error.

pub mod compile;
pub mod kernel_set;
pub mod probe;
pub mod ptxas;
pub mod self_test;

mod attention;
mod attention_varlen;
mod blas;
mod device;
mod graphs;
mod loss;
mod ops;
mod sampling;
mod timing;
mod train;

pub use device::CudaBackend;
pub use graphs::{GraphMode, GraphStats};
pub use ops::{CudaKvCache, CudaTensor, CudaWeight};
pub use train::{CudaAdamState, CudaStats};
