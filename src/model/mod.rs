//! Qwen3: configuration, checkpoint reading, and the one model generic over a backend.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod fresh;
pub mod qwen3;
pub mod random;
pub mod rope;
pub mod save;
pub mod source;

pub use batch::{ForwardBatch, Logits};
pub use checkpoint::Checkpoint;
pub use config::Qwen3Config;
pub use qwen3::Qwen3;
pub use source::ModelSource;
