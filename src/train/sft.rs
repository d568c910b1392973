//! The SFT trainer: packed batches → loss and gradients → AdamW, with evaluation,
//! atomic checkpoints and exact resume (weights, optimizer moments, step, data position).

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::batch::TrainBatch;
use super::grad::{Gradients, loss_and_grad, target_log_probs};
use super::optim::{AdamW, OptimConfig};
use super::sft_data::{DataPosition, SftExample, SftLoader};
use crate::backend::TrainBackend;
use crate::model::Qwen3;
use crate::model::save::ExtraFiles;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SftConfig {
    /// Optimizer steps in all (a resumed run continues to this).
    pub steps: u64,
    /// Tokens per micro-batch (whole conversations packed).
    pub batch_tokens: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Conversations longer than this are cut (and the run says how many); at most the
    /// model's max_position_embeddings.
    pub max_len: usize,
    pub seed: u64,
    /// Save every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: u64,
    pub activation_checkpointing: bool,
    pub optim: OptimConfig,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            steps: 100,
            batch_tokens: 2048,
            grad_accum: 1,
            max_len: 2048,
            seed: 0,
            checkpoint_every: 0,
            eval_every: 0,
            activation_checkpointing: false,
            optim: OptimConfig::default(),
        }
    }
}

/// What a resumed run may change. Anything else comes from the checkpoint: the data order,
/// packing and schedule shape must stay as they were for the run to continue exactly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResumeOverrides {
    /// A new total of optimizer steps (past the checkpoint's step); the cosine schedule
    /// stretches or shrinks to end there, as TRL does with a new `max_steps`.
    pub steps: Option<u64>,
    /// A new peak learning rate; the schedule keeps its shape and scales to it from the next step.
    pub lr: Option<f32>,
}

impl ResumeOverrides {
    /// Applies to `config` of a checkpoint at `step`; a target already reached is refused.
    pub fn apply(&self, config: &mut SftConfig, step: u64) -> Result<()> {
        if let Some(n) = self.steps {
            if n <= step {
                return Err(Error::InvalidInput(format!(
                    "--steps {n}: the checkpoint is already at step {step}; give more steps \
                     to train on"
                )));
            }
            config.steps = n;
            config.optim.total_steps = n;
        }
        if let Some(lr) = self.lr {
            config.optim.lr = lr;
        }
        Ok(())
    }
}

/// Refuses a `max_len` the model has no positions for: sequences past
/// max_position_embeddings train on rotary angles the model never learned.
pub fn check_max_len(max_len: usize, model: &crate::model::Qwen3Config) -> Result<()> {
    if max_len > model.max_position_embeddings {
        return Err(Error::InvalidInput(format!(
            "--max-len {max_len} exceeds the model's max_position_embeddings {}",
            model.max_position_embeddings
        )));
    }
    Ok(())
}

/// Saved beside the weights: what resuming needs besides them and the optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: u64,
    pub position: DataPosition,
    pub tokens_seen: u64,
    pub config: SftConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepLog {
    pub step: u64,
    pub loss: f64,
    pub lr: f32,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Peak resident memory of the process so far.
    pub peak_rss_mb: f64,
    /// Largest device memory in use seen after a step so far (GPU backends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_device_mb: Option<f64>,
}

pub struct SftTrainer<B: TrainBackend> {
    pub model: Qwen3<B>,
    pub optimizer: AdamW<B>,
    grads: Gradients<B>,
    peak_device_mb: f64,
    loader: SftLoader,
    eval: Vec<TrainBatch>,
    pub state: TrainerState,
    /// Tokenizer (and other) files copied into every checkpoint.
    extra_files: ExtraFiles,
}

impl<B: TrainBackend> SftTrainer<B> {
    pub fn new(
        model: Qwen3<B>,
        train: Vec<SftExample>,
        eval: Vec<SftExample>,
        config: SftConfig,
        extra_files: ExtraFiles,
    ) -> Result<Self> {
        let state = TrainerState {
            step: 0,
            position: DataPosition {
                epoch: 0,
                cursor: 0,
            },
            tokens_seen: 0,
            config,
        };
        Self::assemble(model, None, train, eval, state, extra_files)
    }

    fn assemble(
        model: Qwen3<B>,
        optimizer: Option<AdamW<B>>,
        train: Vec<SftExample>,
        eval: Vec<SftExample>,
        state: TrainerState,
        extra_files: ExtraFiles,
    ) -> Result<Self> {
        let c = &state.config;
        let sizes = [
            ("batch_tokens", c.batch_tokens, 1),
            ("grad_accum", c.grad_accum, 1),
            ("max_len", c.max_len, 2),
        ];
        if let Some((name, v, min)) = sizes.iter().find(|(_, v, min)| v < min) {
            return Err(Error::InvalidInput(format!(
                "SFT setting {name} {v}: must be at least {min}"
            )));
        }
        // Whatever max_len says, no example may outrun the model's positions.
        let limit = model.config.max_position_embeddings;
        if let Some(ex) = train.iter().chain(&eval).find(|e| e.ids.len() > limit) {
            return Err(Error::InvalidInput(format!(
                "a conversation of {} tokens is longer than the model's \
                 max_position_embeddings {limit}: lower max_len",
                ex.ids.len()
            )));
        }
        let optimizer = match optimizer {
            Some(o) => o,
            None => AdamW::new(
                &model,
                OptimConfig {
                    total_steps: c.steps,
                    ..c.optim.clone()
                },
            )?,
        };
        let grads = Gradients::zeros(&model)?;
        let eval_loader = SftLoader::new(
            eval,
            0,
            DataPosition {
                epoch: 0,
                cursor: 0,
            },
        );
        let eval = if eval_loader.is_empty() {
            Vec::new()
        } else {
            eval_loader.all_batches(c.batch_tokens)?
        };
        let loader = SftLoader::new(train, c.seed, state.position);
        Ok(SftTrainer {
            model,
            optimizer,
            grads,
            peak_device_mb: 0.0,
            loader,
            eval,
            state,
            extra_files,
        })
    }

    /// Continues from a checkpoint written by `save`: same weights, optimizer moments,
    /// step count and data position, so the loss curve continues as if never stopped.
    pub fn resume(
        backend: B,
        dir: &Path,
        train: Vec<SftExample>,
        eval: Vec<SftExample>,
        extra_files: ExtraFiles,
    ) -> Result<Self> {
        let keep = ResumeOverrides::default();
        Self::resume_with(backend, dir, train, eval, extra_files, &keep)
    }

    /// `resume`, with a new step target and learning rate where `overrides` gives them.
    pub fn resume_with(
        backend: B,
        dir: &Path,
        train: Vec<SftExample>,
        eval: Vec<SftExample>,
        extra_files: ExtraFiles,
        overrides: &ResumeOverrides,
    ) -> Result<Self> {
        let mut state = read_state(dir)?;
        overrides.apply(&mut state.config, state.step)?;
        let model = Qwen3::load_for_training(backend, dir)?;
        let mut optimizer = AdamW::new(
            &model,
            OptimConfig {
                total_steps: state.config.steps,
                ..state.config.optim.clone()
            },
        )?;
        optimizer.load_moments(&model, &dir.join("optimizer.safetensors"), state.step)?;
        Self::assemble(model, Some(optimizer), train, eval, state, extra_files)
    }

    pub fn is_done(&self) -> bool {
        self.state.step >= self.state.config.steps
    }

    /// One optimizer step over `grad_accum` micro-batches.
    pub fn train_step(&mut self) -> Result<StepLog> {
        let started = Instant::now();
        let c = self.state.config.clone();
        self.grads.zero(&self.model.backend)?;
        let (mut loss, mut tokens) = (0.0, 0);
        for _ in 0..c.grad_accum {
            let batch = self.loader.next_batch(c.batch_tokens)?;
            let norm = batch.weight_sum();
            if norm <= 0.0 {
                return Err(Error::InvalidInput(
                    "a micro-batch has no trainable token".into(),
                ));
            }
            loss += loss_and_grad(
                &self.model,
                &batch,
                norm,
                &mut self.grads,
                c.activation_checkpointing,
            )?
            .loss;
            tokens += batch.num_tokens();
        }
        loss /= c.grad_accum as f64;
        let report = self
            .optimizer
            .step(&mut self.model, &self.grads, c.grad_accum)?;
        self.state.step = self.optimizer.step;
        self.state.position = self.loader.position;
        self.state.tokens_seen += tokens as u64;
        let eval_due = c.eval_every > 0 && self.state.step.is_multiple_of(c.eval_every);
        let eval_loss = if (eval_due || self.is_done()) && !self.eval.is_empty() {
            Some(self.evaluate()?)
        } else {
            None
        };
        Ok(StepLog {
            step: self.state.step,
            loss,
            lr: report.lr,
            grad_norm: report.grad_norm,
            tokens,
            tokens_per_second: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
            eval_loss,
            peak_rss_mb: peak_rss_mb(),
            peak_device_mb: self.peak_device_mb(),
        })
    }

    fn peak_device_mb(&mut self) -> Option<f64> {
        let now = self.model.backend.device_memory_used()? as f64 / (1 << 20) as f64;
        self.peak_device_mb = self.peak_device_mb.max(now);
        Some(self.peak_device_mb)
    }

    /// Mean loss per trainable token over the evaluation set (forward only, no update).
    pub fn evaluate(&mut self) -> Result<f64> {
        let (mut total, mut weight) = (0.0, 0.0);
        for batch in &self.eval {
            let logp = target_log_probs(&self.model, batch)?;
            for (lp, &w) in logp.iter().zip(&batch.weights) {
                total -= w as f64 * *lp as f64;
                weight += w as f64;
            }
        }
        Ok(total / weight.max(1e-12))
    }

    /// Weights (HF layout), config, tokenizer files, optimizer moments and trainer state.
    pub fn save(&self, dir: &Path) -> Result<()> {
        super::save_training_checkpoint(
            &self.model,
            &self.optimizer,
            dir,
            &self.extra_files,
            "trainer_state.json",
            &self.state,
        )
    }
}

/// The trainer state saved in checkpoint `dir`.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        file: state_path.clone(),
        msg: format!("not a trainer state: {e}"),
    })
}

/// Peak resident set size (VmHWM) in MiB; 0 where /proc is unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
