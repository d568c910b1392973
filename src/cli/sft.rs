//! `asyncthink sft`: supervised fine-tuning on chat JSONL (e.g. `data traces` output),
//! with a progress bar, a metrics JSONL log, an SVG loss curve, atomic checkpoints and
//! `--resume`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use super::Device;
use super::ModelArgs;
use crate::backend::TrainBackend;
use crate::train::optim::OptimConfig;
use crate::train::plot::loss_curve_svg;
use crate::train::run_dir::{clean_stale, truncate_log};
use crate::train::sft::{ResumeOverrides, SftConfig, SftTrainer, check_max_len, read_state};
use crate::train::sft_data::{SftExample, describe_cuts, load_jsonl};
use crate::util::write_atomic;
use crate::{Error, Result};

#[derive(Args, Debug)]
pub struct SftArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Chat JSONL: {"messages": [...], "meta": {"inserted_byte_spans": [...]}} per line.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Output directory: metrics.jsonl, loss.svg, checkpoint-N/, final/.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from a checkpoint directory written by this command. Its settings are kept,
    /// except --steps and --lr where given (docs/training.md); metrics.jsonl in --out is cut
    /// back to the checkpoint's step.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Optimizer steps in all [default: 100]. With --resume: a new total past the
    /// checkpoint's step, the cosine schedule rescaled to end there.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Peak learning rate [default: 0.001]. With --resume: the new peak from the next step.
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long, default_value_t = 10)]
    pub warmup_steps: u64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    #[arg(long, default_value_t = 2048)]
    pub batch_tokens: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Conversations longer than this many tokens are cut (the run says how many)
    /// [default: 2048, or the model's max_position_embeddings if smaller; never more].
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: u64,
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Recompute each layer's activations in backward instead of keeping them.
    #[arg(long)]
    pub activation_checkpointing: bool,
    /// Where training runs: cpu (f32), or cuda (GPU 0: bf16 weights and activations, f32
    /// master weights, gradients and AdamW moments).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
}

impl SftArgs {
    /// Every flag, before the data is read or a model loads (`--max-len 0` used to surface
    /// as a complaint about the data).
    fn validate(&self) -> Result<()> {
        use super::validate::*;
        self.model.validate()?;
        // Optional since a resume may keep the checkpoint's own steps and rate.
        if let Some(steps) = self.steps {
            at_least("--steps", steps, 1)?;
        }
        if let Some(lr) = self.lr {
            positive("--lr", lr)?;
        }
        non_negative("--weight-decay", self.weight_decay)?;
        non_negative("--max-grad-norm", self.max_grad_norm)?;
        at_least("--batch-tokens", self.batch_tokens, 1)?;
        at_least("--grad-accum", self.grad_accum, 1)?;
        // A prompt token and a target token at least.
        match self.max_len {
            Some(len) => at_least("--max-len", len, 2),
            None => Ok(()),
        }
    }
}

pub fn run(args: SftArgs) -> Result<()> {
    args.validate()?;
    args.model.init_threads()?;
    on_device!(args.device, args.model.precision, backend => run_on(args, backend))
}

/// Tokenizes `path`, saying how many conversations `max_len` cut.
fn load_data(
    path: &Path,
    tokenizer: &crate::tokenizer::Tokenizer,
    max_len: usize,
) -> Result<Vec<SftExample>> {
    let data = load_jsonl(path, tokenizer, max_len)?;
    if let Some(msg) = describe_cuts(path, &data, max_len) {
        eprintln!("{msg}");
    }
    Ok(data)
}

fn run_on<B: TrainBackend>(args: SftArgs, backend: B) -> Result<()> {
    let source = args.model.source();
    let extra = source.tokenizer_files()?;
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    for line in clean_stale(&args.out)? {
        eprintln!("{line}");
    }

    let mut trainer = match &args.resume {
        Some(dir) => {
            let tokenizer = crate::tokenizer::Tokenizer::from_dir(dir)?;
            let max_len = read_state(dir)?.config.max_len;
            // Refused, not ignored: the checkpoint's data position counts these examples.
            if args.max_len.is_some_and(|n| n != max_len) {
                return Err(Error::InvalidInput(format!(
                    "--max-len cannot change on --resume (the checkpoint trains with {max_len})"
                )));
            }
            let train = load_data(&args.data, &tokenizer, max_len)?;
            let eval = match &args.eval_data {
                Some(p) => load_data(p, &tokenizer, max_len)?,
                None => Vec::new(),
            };
            let overrides = ResumeOverrides {
                steps: args.steps,
                lr: args.lr,
            };
            SftTrainer::resume_with(backend, dir, train, eval, extra, &overrides)?
        }
        None => {
            let (model, tokenizer) = source.load_for_training(backend)?;
            // Before tokenizing: a length the model cannot take fails at once.
            let max_len = match args.max_len {
                Some(n) => {
                    check_max_len(n, &model.config)?;
                    n
                }
                None => 2048.min(model.config.max_position_embeddings),
            };
            let steps = args.steps.unwrap_or(100);
            let config = SftConfig {
                steps,
                batch_tokens: args.batch_tokens,
                grad_accum: args.grad_accum,
                max_len,
                seed: args.seed,
                checkpoint_every: args.checkpoint_every,
                eval_every: args.eval_every,
                activation_checkpointing: args.activation_checkpointing,
                optim: OptimConfig {
                    lr: args.lr.unwrap_or(1e-3),
                    warmup_steps: args.warmup_steps,
                    total_steps: steps,
                    weight_decay: args.weight_decay,
                    max_grad_norm: args.max_grad_norm,
                    ..OptimConfig::default()
                },
            };
            let train = load_data(&args.data, &tokenizer, max_len)?;
            let eval = match &args.eval_data {
                Some(p) => load_data(p, &tokenizer, max_len)?,
                None => Vec::new(),
            };
            SftTrainer::new(model, train, eval, config, extra)?
        }
    };

    let metrics_path = args.out.join("metrics.jsonl");
    // The steps after the checkpoint are trained again: their old lines would be logged
    // (and plotted) twice. A fresh run (step 0) starts a fresh log.
    let dropped = truncate_log(&metrics_path, trainer.state.step)?;
    if dropped > 0 {
        eprintln!(
            "{}: dropped {dropped} lines past step {}, which this run trains again",
            metrics_path.display(),
            trainer.state.step
        );
    }
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let (mut train_curve, mut eval_curve) = read_curves(&metrics_path);
    let total = trainer.state.config.steps;
    let bar = super::progress::bar(total, "steps")?;
    bar.set_position(trainer.state.step);
    let every = trainer.state.config.checkpoint_every;
    while !trainer.is_done() {
        let log = trainer.train_step()?;
        let line = serde_json::to_string(&log)?;
        writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
        train_curve.push((log.step, log.loss));
        if let Some(e) = log.eval_loss {
            eval_curve.push((log.step, e));
        }
        bar.set_message(format!(
            "loss {:.4}  {:.0} tok/s",
            log.loss, log.tokens_per_second
        ));
        bar.set_position(log.step);
        if every > 0 && log.step % every == 0 && !trainer.is_done() {
            trainer.save(&args.out.join(format!("checkpoint-{}", log.step)))?;
        }
    }
    bar.finish_and_clear();
    trainer.save(&args.out.join("final"))?;
    write_atomic(
        &args.out.join("loss.svg"),
        loss_curve_svg(&train_curve, &eval_curve).as_bytes(),
    )?;
    let last = train_curve.last().map_or(f64::NAN, |x| x.1);
    eprintln!(
        "trained to step {} (last loss {last:.4}, {} tokens); checkpoint {}",
        trainer.state.step,
        trainer.state.tokens_seen,
        args.out.join("final").display()
    );
    Ok(())
}

/// (step, loss) points.
type Curve = Vec<(u64, f64)>;

/// Curves already logged by an earlier (resumed) run in the same output directory.
fn read_curves(path: &std::path::Path) -> (Curve, Curve) {
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            let step = v["step"].as_u64().unwrap_or(0);
            if let Some(l) = v["loss"].as_f64() {
                train.push((step, l));
            }
            if let Some(e) = v["eval_loss"].as_f64() {
                eval.push((step, e));
            }
        }
    }
    (train, eval)
}
