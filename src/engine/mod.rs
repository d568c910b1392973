//! Driving the model: sampling, and single-sequence generation over the paged cache.

pub mod generate;
pub mod sampling;

pub use generate::{FinishReason, GenerationOutput, Generator};
pub use sampling::{Sampler, SamplingParams};
