//! `asyncthink grpo`: reinforcement learning of the organizer/worker policy on a task
//! file, with rewards for accuracy, format and thinking concurrency.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::Device;
use super::ModelArgs;
use super::data::TaskName;
use super::think::{ExecutorArgs, register_tags};
use crate::backend::TrainBackend;
use crate::engine::EngineConfig;
use crate::tasks::Task;
use crate::tasks::arithmetic::Arithmetic;
use crate::tasks::countdown::Countdown;
use crate::tasks::multi_countdown::MultiCountdown;
use crate::tasks::products::Products;
use crate::tasks::sudoku::Sudoku;
use crate::train::grpo::{Aggregation, GrpoConfig, RewardScale};
use crate::train::grpo_loop::{GrpoRunConfig, GrpoStepLog, GrpoTrainer};
use crate::train::optim::OptimConfig;
use crate::train::reward::RewardConfig;
use crate::util::write_atomic;
use crate::{Error, Result};

#[derive(Args, Debug, Clone)]
pub struct GrpoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Items written by `asyncthink data gen`.
    #[arg(long)]
    pub tasks: PathBuf,
    #[arg(long, value_enum, default_value = "arithmetic")]
    pub task: TaskName,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    #[arg(long, default_value_t = 4)]
    pub group_size: usize,
    #[arg(long, default_value_t = 4)]
    pub prompts_per_step: usize,
    #[arg(long, default_value_t = 1)]
    pub updates_per_batch: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.2)]
    pub clip_low: f32,
    #[arg(long, default_value_t = 0.28)]
    pub clip_high: f32,
    #[arg(long, default_value_t = 0.0)]
    pub kl_coef: f32,
    #[arg(long, value_enum, default_value = "token-mean")]
    pub aggregation: Aggregation,
    #[arg(long, value_enum, default_value = "group")]
    pub reward_scale: RewardScale,
    /// λ: weight of the thinking-concurrency reward.
    #[arg(long, default_value_t = 0.25)]
    pub lambda: f64,
    /// τ: concurrency ratio η/c at which R_η saturates.
    #[arg(long, default_value_t = 0.5)]
    pub tau: f64,
    /// R_FE: reward of an episode with a format error.
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true)]
    pub format_error_reward: f64,
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: u64,
    /// Where rollouts and updates run: cpu, or cuda (GPU 0; one bf16 copy of the weights
    /// serves both, with f32 masters for AdamW).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Rollout decode steps replay CUDA graphs; AdamW updates the weights in place, so the
    /// graphs stay valid across updates.
    #[command(flatten)]
    pub graphs: super::CudaGraphArgs,
    /// Continue from a directory written by this command.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub executor: ExecutorArgs,
}

impl GrpoArgs {
    /// Every flag, before the tasks are read or a model loads: a bad clip bound used to
    /// panic in the loss only after a whole rollout.
    pub fn validate(&self) -> Result<()> {
        use super::validate::*;
        self.model.validate()?;
        self.graphs.validate()?;
        self.executor.validate()?;
        at_least("--steps", self.steps, 1)?;
        // A group of one has advantage 0 whatever its reward: nothing to learn from.
        at_least("--group-size", self.group_size, 2)?;
        at_least("--prompts-per-step", self.prompts_per_step, 1)?;
        at_least("--updates-per-batch", self.updates_per_batch, 1)?;
        positive("--lr", self.lr)?;
        within("--clip-low", self.clip_low, 0.0..1.0)?;
        non_negative("--clip-high", self.clip_high)?;
        non_negative("--kl-coef", self.kl_coef)?;
        non_negative("--lambda", self.lambda)?;
        within("--tau", self.tau, FRACTION)?;
        finite("--format-error-reward", self.format_error_reward)
    }

    fn run_config(&self) -> GrpoRunConfig {
        GrpoRunConfig {
            steps: self.steps,
            group_size: self.group_size,
            prompts_per_step: self.prompts_per_step,
            updates_per_batch: self.updates_per_batch,
            seed: self.executor.seed,
            checkpoint_every: self.checkpoint_every,
            grpo: GrpoConfig {
                clip_low: self.clip_low,
                clip_high: self.clip_high,
                kl_coef: self.kl_coef,
                aggregation: self.aggregation,
                constant_normalizer: self.executor.organizer_tokens as f32,
                reward_scale: self.reward_scale,
            },
            reward: RewardConfig {
                format_error: self.format_error_reward,
                lambda: self.lambda,
                tau: self.tau,
            },
            optim: OptimConfig {
                lr: self.lr,
                warmup_steps: 0,
                total_steps: self.steps,
                weight_decay: 0.0,
                ..OptimConfig::default()
            },
        }
    }
}

fn train<T: Task, B: TrainBackend>(args: &GrpoArgs, backend: B) -> Result<Vec<GrpoStepLog>> {
    let text = std::fs::read_to_string(&args.tasks).map_err(|e| Error::io(&args.tasks, e))?;
    let items: Vec<T::Item> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::InvalidInput(format!("{}:{}: {e}", args.tasks.display(), i + 1))
            })
        })
        .collect::<Result<_>>()?;
    let source = args.model.source();
    let (model, mut tokenizer) = match &args.resume {
        Some(dir) => {
            crate::model::ModelSource::Dir(dir.clone()).load_for_training(backend.clone())?
        }
        None => source.load_for_training(backend.clone())?,
    };
    let exec = args.executor.config();
    register_tags(&mut tokenizer, &exec, model.config.vocab_size);
    let reference = if args.kl_coef > 0.0 {
        Some(source.load_for_training(backend)?.0)
    } else {
        None
    };
    let engine = args.executor.kv.apply(EngineConfig::default(), &model)?;
    let questions = items.iter().map(T::prompt).collect();
    let extra = source.tokenizer_files()?;
    let mut trainer = GrpoTrainer::new(
        model,
        reference,
        &tokenizer,
        questions,
        |i, a| T::verify(&items[i], a),
        exec,
        engine,
        args.run_config(),
        extra,
    )?;
    if let Some(dir) = &args.resume {
        trainer.restore(dir)?;
        if trainer.is_done() {
            eprintln!(
                "grpo: {} is already at its last step ({}); nothing to train. To train further, \
                 start a new run from it with --model {}",
                dir.display(),
                trainer.state.step,
                dir.display()
            );
            return Ok(Vec::new());
        }
    }
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    for line in crate::train::run_dir::clean_stale(&args.out)? {
        eprintln!("{line}");
    }
    let metrics_path = args.out.join("grpo_metrics.jsonl");
    // Steps past the checkpoint are trained again: log them once (a fresh run, step 0,
    // starts a fresh log).
    crate::train::run_dir::truncate_log(&metrics_path, trainer.state.step)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let mut logs = Vec::new();
    eprintln!(
        "grpo: per step, mean reward ± its spread, accuracy, format-valid rate, critical path \
         (tokens on the longest organizer/worker chain) and thinking concurrency η (mean agents \
         active per step)"
    );
    while !trainer.is_done() {
        let log = trainer.train_step()?;
        writeln!(metrics, "{}", serde_json::to_string(&log)?)
            .map_err(|e| Error::io(&metrics_path, e))?;
        eprintln!(
            "grpo step {:3}: reward {:+.3} ± {:.3}, accuracy {:.2}, format-valid {:.2}, critical path {:.0}, η {:.2}, gen {:.1}s train {:.1}s",
            log.step,
            log.reward_mean,
            log.reward_std,
            log.accuracy,
            log.format_valid_rate,
            log.mean_critical_path_tokens,
            log.mean_concurrency,
            log.generation_seconds,
            log.training_seconds
        );
        let every = trainer.state.config.checkpoint_every;
        if every > 0 && log.step.is_multiple_of(every) {
            trainer.save(&args.out.join(format!("checkpoint-{}", log.step)))?;
        }
        logs.push(log);
    }
    trainer.save(&args.out.join("final"))?;
    // One curve per headline metric, beside grpo_metrics.jsonl.
    type Metric = fn(&GrpoStepLog) -> f64;
    let curves: [(&str, &str, Metric); 5] = [
        ("reward.svg", "mean reward", |l| l.reward_mean),
        ("format_valid.svg", "format-valid rate", |l| {
            l.format_valid_rate
        }),
        ("accuracy.svg", "accuracy", |l| l.accuracy),
        ("concurrency.svg", "concurrency η", |l| l.mean_concurrency),
        ("critical_path.svg", "critical path (tokens)", |l| {
            l.mean_critical_path_tokens
        }),
    ];
    for (file, name, metric) in curves {
        let points: Vec<(u64, f64)> = logs.iter().map(|l| (l.step, metric(l))).collect();
        write_atomic(
            &args.out.join(file),
            crate::train::plot::curve_svg(name, &points, &[]).as_bytes(),
        )?;
    }
    eprintln!(
        "grpo: model in {}, per-step metrics in {}, curves (reward, accuracy, format_valid, \
         concurrency, critical_path .svg) in {}",
        args.out.join("final").display(),
        metrics_path.display(),
        args.out.display()
    );
    Ok(logs)
}

pub fn run_with(args: &GrpoArgs) -> Result<Vec<GrpoStepLog>> {
    on_device!(args.device, args.model.precision, args.graphs, backend => run_task(args, backend))
}

fn run_task<B: TrainBackend>(args: &GrpoArgs, backend: B) -> Result<Vec<GrpoStepLog>> {
    match args.task {
        TaskName::Countdown => train::<Countdown, B>(args, backend),
        TaskName::MultiCountdown => train::<MultiCountdown, B>(args, backend),
        TaskName::Arithmetic => train::<Arithmetic, B>(args, backend),
        TaskName::Products => train::<Products, B>(args, backend),
        TaskName::Sudoku => train::<Sudoku, B>(args, backend),
        TaskName::Math => Err(Error::InvalidInput("math items need a dataset".into())),
    }
}

pub fn run(args: GrpoArgs) -> Result<()> {
    args.validate()?;
    args.model.init_threads()?;
    run_with(&args).map(|_| ())
}
