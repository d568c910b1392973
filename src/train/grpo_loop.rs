//! The AsyncThink RL loop: rollouts from the executor on the engine → rewards for
//! accuracy, format and concurrency → group-relative advantages → a GRPO update, with
//! checkpoints and metrics. The engine borrows the trainer's weights for the rollouts
//! and gives them back for the update: one copy of the parameters, never transferred.

use std::path::Path;
use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::grpo::{GrpoConfig, advantages};
use super::grpo_step::{RolloutSeq, grpo_update};
use super::optim::{AdamW, OptimConfig};
use super::reward::{RewardConfig, reward};
use crate::asyncthink::executor::{ExecutorConfig, run_episodes};
use crate::backend::TrainBackend;
use crate::engine::{Engine, EngineConfig};
use crate::model::Qwen3;
use crate::model::save::ExtraFiles;
use crate::tasks::Verdict;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpoRunConfig {
    pub steps: u64,
    pub group_size: usize,
    pub prompts_per_step: usize,
    /// Optimizer steps per rollout batch.
    pub updates_per_batch: usize,
    pub seed: u64,
    pub checkpoint_every: u64,
    pub grpo: GrpoConfig,
    pub reward: RewardConfig,
    pub optim: OptimConfig,
}

impl Default for GrpoRunConfig {
    fn default() -> Self {
        GrpoRunConfig {
            steps: 20,
            group_size: 4,
            prompts_per_step: 4,
            updates_per_batch: 1,
            seed: 0,
            checkpoint_every: 0,
            grpo: GrpoConfig::default(),
            reward: RewardConfig::default(),
            optim: OptimConfig {
                lr: 1e-4,
                warmup_steps: 0,
                weight_decay: 0.0,
                ..OptimConfig::default()
            },
        }
    }
}

/// What one step measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GrpoStepLog {
    pub step: u64,
    pub reward_mean: f64,
    pub reward_std: f64,
    pub accuracy_reward_mean: f64,
    pub concurrency_reward_mean: f64,
    pub accuracy: f64,
    pub format_valid_rate: f64,
    pub mean_critical_path_tokens: f64,
    pub mean_concurrency: f64,
    pub kl: f64,
    pub clip_fraction: f64,
    pub logprob_gap_max: f64,
    pub logprob_gap_mean: f64,
    /// Sampled tokens whose log-prob the trainer compared with the sampler's.
    pub logprob_gap_tokens: usize,
    pub grad_norm: f64,
    pub generated_tokens: usize,
    pub generation_seconds: f64,
    pub training_seconds: f64,
    pub generation_tokens_per_second: f64,
    pub training_tokens_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoState {
    pub step: u64,
    pub config: GrpoRunConfig,
}

/// Verifies an answer to question i.
type Judge<'t> = Box<dyn Fn(usize, &str) -> Verdict + 't>;

pub struct GrpoTrainer<'t, B: TrainBackend> {
    pub model: Qwen3<B>,
    pub optimizer: AdamW<B>,
    reference: Option<Qwen3<B>>,
    tokenizer: &'t Tokenizer,
    questions: Vec<String>,
    judge: Judge<'t>,
    pub executor: ExecutorConfig,
    pub engine: EngineConfig,
    pub state: GrpoState,
    extra_files: ExtraFiles,
}

impl<'t, B: TrainBackend> GrpoTrainer<'t, B> {
    /// `judge(i, answer)` verifies an answer to `questions[i]`. `reference` is the frozen
    /// model of the KL penalty (needed only when its coefficient is positive).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Qwen3<B>,
        reference: Option<Qwen3<B>>,
        tokenizer: &'t Tokenizer,
        questions: Vec<String>,
        judge: impl Fn(usize, &str) -> Verdict + 't,
        executor: ExecutorConfig,
        engine: EngineConfig,
        config: GrpoRunConfig,
        extra_files: ExtraFiles,
    ) -> Result<Self> {
        if questions.is_empty() || config.group_size == 0 || config.prompts_per_step == 0 {
            return Err(Error::InvalidInput(
                "GRPO needs questions, a group size and prompts per step".into(),
            ));
        }
        if config.grpo.kl_coef > 0.0 && reference.is_none() {
            return Err(Error::InvalidInput(
                "a KL coefficient needs a reference model".into(),
            ));
        }
        config.reward.validate()?;
        config.grpo.validate()?;
        if config.updates_per_batch == 0 {
            return Err(Error::InvalidInput(
                "GRPO setting updates_per_batch 0: must be at least 1".into(),
            ));
        }
        let optimizer = AdamW::new(
            &model,
            OptimConfig {
                total_steps: config.steps,
                ..config.optim.clone()
            },
        )?;
        Ok(GrpoTrainer {
            model,
            optimizer,
            reference,
            tokenizer,
            questions,
            judge: Box::new(judge),
            executor,
            engine,
            state: GrpoState { step: 0, config },
            extra_files,
        })
    }

    pub fn is_done(&self) -> bool {
        self.state.step >= self.state.config.steps
    }

    /// The questions of step `step`: a seeded reshuffle per pass over the set, so a
    /// resumed run sees the same ones.
    fn questions_for(&self, step: u64) -> Vec<usize> {
        let c = &self.state.config;
        let n = self.questions.len();
        let per_pass = n.div_ceil(c.prompts_per_step).max(1) as u64;
        let pass = step / per_pass;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            c.seed ^ pass.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ));
        let start = ((step % per_pass) as usize) * c.prompts_per_step;
        (0..c.prompts_per_step)
            .map(|k| order[(start + k) % n])
            .collect()
    }

    pub fn train_step(&mut self) -> Result<GrpoStepLog> {
        let c = self.state.config.clone();
        let step = self.state.step;
        let picked = self.questions_for(step);
        let questions: Vec<String> = picked
            .iter()
            .flat_map(|&q| std::iter::repeat_n(self.questions[q].clone(), c.group_size))
            .collect();

        // Rollouts: the engine reads the trainer's weights in place.
        let started = Instant::now();
        let outcomes = {
            let mut engine = Engine::new(&self.model, Some(self.tokenizer), self.engine.clone())?;
            run_episodes(
                &mut engine,
                self.tokenizer,
                &self.executor,
                &questions,
                None,
                c.seed.wrapping_add(step * 7919),
            )?
        };
        let generation_seconds = started.elapsed().as_secs_f64();

        let mut log = GrpoStepLog {
            step: step + 1,
            generation_seconds,
            ..Default::default()
        };
        let mut rewards = Vec::with_capacity(outcomes.len());
        let mut seqs = Vec::new();
        let n = outcomes.len() as f64;
        for (unit, (o, &q)) in outcomes
            .iter()
            .zip(
                picked
                    .iter()
                    .flat_map(|q| std::iter::repeat_n(q, c.group_size)),
            )
            .enumerate()
        {
            let verdict = match &o.record.final_answer {
                Some(a) => (self.judge)(q, a),
                None => Verdict::wrong("no final answer"),
            };
            let r = reward(&o.record, &verdict, &c.reward);
            rewards.push(r.total);
            log.accuracy_reward_mean += r.accuracy / n;
            log.concurrency_reward_mean += r.concurrency / n;
            log.accuracy += f64::from(u8::from(verdict.is_correct())) / n;
            log.format_valid_rate += f64::from(u8::from(!r.format_error)) / n;
            log.mean_critical_path_tokens += o.critical_path_tokens as f64 / n;
            log.mean_concurrency += o.record.concurrency / n;
            log.generated_tokens += o.total_tokens;
            // One unit per episode: the organizer's and all its workers' sampled tokens.
            for r in &o.rollouts {
                if !r.generated.is_empty() {
                    seqs.push(RolloutSeq {
                        ids: r.ids.clone(),
                        generated: r.generated.clone(),
                        old_logprobs: r.logprobs.clone(),
                        unit,
                    });
                }
            }
        }
        log.reward_mean = rewards.iter().sum::<f64>() / n;
        log.reward_std = (rewards
            .iter()
            .map(|r| (r - log.reward_mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        log.generation_tokens_per_second =
            log.generated_tokens as f64 / generation_seconds.max(1e-9);

        let adv = advantages(&rewards, c.group_size, c.grpo.reward_scale)?;
        let started = Instant::now();
        if !seqs.is_empty() {
            let stats = grpo_update(
                &mut self.model,
                &mut self.optimizer,
                &seqs,
                &adv,
                self.reference.as_ref(),
                &c.grpo,
                c.updates_per_batch,
            )?;
            log.kl = stats.objective.kl;
            log.clip_fraction = stats.objective.clip_fraction;
            log.logprob_gap_max = stats.logprob_gap_max;
            log.logprob_gap_mean = stats.logprob_gap_mean;
            log.logprob_gap_tokens = seqs.iter().map(|s| s.generated.len()).sum();
            log.grad_norm = stats.grad_norm;
        }
        log.training_seconds = started.elapsed().as_secs_f64();
        let trained_tokens: usize = seqs.iter().map(|s| s.ids.len()).sum();
        log.training_tokens_per_second =
            (trained_tokens * c.updates_per_batch.max(1)) as f64 / log.training_seconds.max(1e-9);
        self.state.step = step + 1;
        Ok(log)
    }

    /// Weights, config, tokenizer files, optimizer moments and the loop state.
    pub fn save(&self, dir: &Path) -> Result<()> {
        super::save_training_checkpoint(
            &self.model,
            &self.optimizer,
            dir,
            &self.extra_files,
            "grpo_state.json",
            &self.state,
        )
    }

    /// Continues from `save`'s directory: weights are loaded by the caller (`model`).
    pub fn restore(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("grpo_state.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        self.state = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
            file: path.clone(),
            msg: e.to_string(),
        })?;
        self.optimizer.load_moments(
            &self.model,
            &dir.join("optimizer.safetensors"),
            self.state.step,
        )
    }
}
