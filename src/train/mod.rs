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
pub mod sft;
pub mod sft_data;

pub use batch::TrainBatch;
pub use grad::{Gradients, LossReport, loss_and_grad};
