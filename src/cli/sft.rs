//! `asyncthink sft`: supervised fine-tuning on chat JSONL (e.g. `data traces` output),
//! with a progress bar, a metrics JSONL log, an SVG loss curve, atomic checkpoints and
//! `--resume`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::Device;
use super::ModelArgs;
use crate::backend::TrainBackend;
use crate::train::optim::OptimConfig;
use crate::train::plot::loss_curve_svg;
use crate::train::sft::{SftConfig, SftTrainer};
use crate::train::sft_data::load_jsonl;
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
    /// Continue from a checkpoint directory written by this command.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    pub steps: u64,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
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
    #[arg(long, default_value_t = 2048)]
    pub max_len: usize,
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
        at_least("--steps", self.steps, 1)?;
        positive("--lr", self.lr)?;
        non_negative("--weight-decay", self.weight_decay)?;
        non_negative("--max-grad-norm", self.max_grad_norm)?;
        at_least("--batch-tokens", self.batch_tokens, 1)?;
        at_least("--grad-accum", self.grad_accum, 1)?;
        // A prompt token and a target token at least.
        at_least("--max-len", self.max_len, 2)
    }
}

pub fn run(args: SftArgs) -> Result<()> {
    args.validate()?;
    args.model.init_threads()?;
    on_device!(args.device, backend => run_on(args, backend))
}

fn run_on<B: TrainBackend>(args: SftArgs, backend: B) -> Result<()> {
    let source = args.model.source();
    let extra = source.tokenizer_files()?;
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;

    let mut trainer = match &args.resume {
        Some(dir) => {
            let tokenizer = crate::tokenizer::Tokenizer::from_dir(dir)?;
            let state: crate::train::sft::TrainerState = serde_json::from_slice(
                &std::fs::read(dir.join("trainer_state.json"))
                    .map_err(|e| Error::io(dir.join("trainer_state.json"), e))?,
            )?;
            let train = load_jsonl(&args.data, &tokenizer, state.config.max_len)?;
            let eval = match &args.eval_data {
                Some(p) => load_jsonl(p, &tokenizer, state.config.max_len)?,
                None => Vec::new(),
            };
            SftTrainer::resume(backend, dir, train, eval, extra)?
        }
        None => {
            let (model, tokenizer) = source.load_for_training(backend)?;
            let config = SftConfig {
                steps: args.steps,
                batch_tokens: args.batch_tokens,
                grad_accum: args.grad_accum,
                max_len: args.max_len,
                seed: args.seed,
                checkpoint_every: args.checkpoint_every,
                eval_every: args.eval_every,
                activation_checkpointing: args.activation_checkpointing,
                optim: OptimConfig {
                    lr: args.lr,
                    warmup_steps: args.warmup_steps,
                    total_steps: args.steps,
                    weight_decay: args.weight_decay,
                    max_grad_norm: args.max_grad_norm,
                    ..OptimConfig::default()
                },
            };
            let train = load_jsonl(&args.data, &tokenizer, args.max_len)?;
            let eval = match &args.eval_data {
                Some(p) => load_jsonl(p, &tokenizer, args.max_len)?,
                None => Vec::new(),
            };
            SftTrainer::new(model, train, eval, config, extra)?
        }
    };

    let metrics_path = args.out.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let (mut train_curve, mut eval_curve) = read_curves(&metrics_path);
    let total = trainer.state.config.steps;
    let bar = ProgressBar::new(total);
    bar.set_position(trainer.state.step);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]",
        )
        .map_err(|e| Error::InvalidInput(e.to_string()))?,
    );
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
