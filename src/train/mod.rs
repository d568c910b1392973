//! Training: batches, the loss and its gradient over any `TrainBackend`, the optimizer,
//! and rewards shared by the executor and GRPO.

pub mod batch;
pub mod grad;
pub mod grpo;
pub mod grpo_loop;
pub mod grpo_step;
pub mod optim;
pub mod plot;
pub mod reward;
pub mod run_dir;
pub mod sft;
pub mod sft_data;

pub use batch::TrainBatch;
pub use grad::{Gradients, LossReport, loss_and_grad};

use std::path::Path;

use crate::Result;
use crate::backend::TrainBackend;
use crate::model::Qwen3;
use crate::model::save::{ExtraFiles, save_checkpoint_with, write_file};

/// A resumable training checkpoint: the Hugging Face directory plus the AdamW moments and
/// the trainer's own state as `state_file` (SFT and GRPO differ only in that state).
pub fn save_training_checkpoint<B: TrainBackend>(
    model: &Qwen3<B>,
    optimizer: &optim::AdamW<B>,
    dir: &Path,
    extra_files: &ExtraFiles,
    state_file: &str,
    state: &impl serde::Serialize,
) -> Result<()> {
    save_checkpoint_with(model, dir, extra_files, |tmp| {
        optimizer.write_moments(model, &tmp.join("optimizer.safetensors"))?;
        write_file(tmp, state_file, &serde_json::to_vec_pretty(state)?)
    })
}
