//! The project's one error type. Every input path returns `Result<T>` so bad input
//! (a broken checkpoint, a malformed tag, a full KV cache) surfaces as a message, never a panic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid config {path}: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error("unsupported model: {0}")]
    Unsupported(String),

    #[error("checkpoint {file}: tensor {tensor}: {msg}")]
    Tensor {
        file: PathBuf,
        tensor: String,
        msg: String,
    },

    #[error("checkpoint {file}: {msg}")]
    Checkpoint { file: PathBuf, msg: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// NaN or Inf where numbers must be finite (weights at load, logits at run time).
    #[error("non-finite values: {0}")]
    NonFinite(String),

    #[error("KV cache is full: {0}")]
    KvCacheFull(String),

    #[error(transparent)]
    Protocol(#[from] crate::asyncthink::protocol::ProtocolError),

    #[error("backend {backend}: {msg}")]
    Backend { backend: &'static str, msg: String },

    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
