use thiserror::Error;

pub type Result<T> = std::result::Result<T, EmuError>;

/// Everything the emulator can refuse or catch. Every variant names where it happened so a
/// kernel bug reads like a GPU sanitizer report, only with the nearest allocation attached.
#[derive(Debug, Error)]
pub enum EmuError {
    #[error("PTX line {line}: {msg}")]
    Parse { line: usize, msg: String },
    #[error(
        "PTX line {line}: unsupported instruction `{opcode}` (the emulator implements only what asyncthink's kernels use; see docs/emulator.md)"
    )]
    Unsupported { line: usize, opcode: String },
    #[error("no kernel named `{0}` in the module")]
    NoKernel(String),
    #[error("launch of `{kernel}`: {msg}")]
    Launch { kernel: String, msg: String },
    #[error("{kernel} block {block:?} thread {thread:?}, PTX line {line}: {msg}")]
    Fault {
        kernel: String,
        block: [u32; 3],
        thread: [u32; 3],
        line: usize,
        msg: String,
    },
    #[error("{kernel} block {block:?}: deadlock: {msg}")]
    Deadlock {
        kernel: String,
        block: [u32; 3],
        msg: String,
    },
    #[error("device memory: {0}")]
    Memory(String),
}
