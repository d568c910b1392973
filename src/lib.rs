//! asyncthink: a Qwen3 engine built for asynchronous thinking.
//!
//! Layout follows the architecture: `model` (config, weights, the one generic Qwen3),
//! `backend` (CPU reference; CUDA later), `kv` (the paged cache), `engine` (sampling,
//! scheduling, batching), `tokenizer`, `asyncthink` (protocol, episodes, traces),
//! `tasks` (generators and verifiers), `train` (rewards), `serve` (the OpenAI-compatible
//! HTTP server), `cli`.

pub mod asyncthink;
pub mod backend;
pub mod cli;
pub mod engine;
pub mod error;
pub mod kv;
pub mod model;
pub mod serve;
pub mod tasks;
pub mod tokenizer;
pub mod train;
pub mod util;

pub use error::{Error, Result};
