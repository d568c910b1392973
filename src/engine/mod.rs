//! Driving the model: sequences, the scheduler, the batching engine, and sampling.

#[allow(clippy::module_inception)]
mod engine;
mod generate;
pub mod memory;
pub mod sampling;
mod scheduler;
pub mod sequence;

pub use engine::{Engine, EngineConfig, EngineStats, StepOutput};
pub use generate::GenerationOutput;
pub use sampling::{Sampler, SamplingParams};
pub use sequence::{FinishReason, SeqId, Sequence};
