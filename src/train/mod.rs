//! Training: rewards shared by the executor and GRPO.

pub mod reward;
