//! asyncthink: a Qwen3 engine built for asynchronous thinking.
//!
//! Layout follows the architecture: `model` (config, weights, the one generic Qwen3),
//! `backend` (CPU reference; CUDA later), `kv` (the paged cache), `engine` (sampling,
//! generation, batching), `tokenizer`, `cli`.

pub mod backend;
pub mod cli;
pub mod engine;
pub mod error;
pub mod kv;
pub mod model;
pub mod tokenizer;
pub mod util;

pub use error::{Error, Result};
