//! asyncthink: a Qwen3 engine built for asynchronous thinking.
//!
//! Layout follows the architecture: `model` (config, weights, the one generic Qwen3),
//! `backend` (CPU reference; CUDA later), `kv` (the paged cache), `engine` (sampling,
//! generation, batching), `asyncthink` (protocol, executor), `train`, `cli`.

pub mod asyncthink;
pub mod cli;
pub mod error;
pub mod tasks;
pub mod train;

pub use error::{Error, Result};
