//! `asyncthink experiment`: the AsyncThink result, reproduced at a size two CPU cores train
//! in well under an hour. A fresh few-million-parameter Qwen3 (protocol tags as single
//! tokens) learns the products task (src/tasks/products.rs) by format SFT on random-structure
//! traces, then GRPO; it is measured on held-out questions against sequential and parallel
//! thinking, with the paper's two ablations (no concurrency reward; one fixed structure).
//! docs/results.md quotes a run; with `--model DIR --device cuda` the same pipeline starts
//! from a real checkpoint.

mod pictures;
mod report;

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use super::data::TaskName;
use super::demo::jsonl;
use super::eval::{EvalArgs, evaluate};
use super::grpo::{GrpoArgs, run_with};
use super::think::ExecutorArgs;
use super::{CudaGraphArgs, Device, KvMemoryArgs, ModelArgs};
use crate::asyncthink::executor::{ExecutorConfig, ThinkingMode};
use crate::asyncthink::protocol::ProtocolTags;
use crate::asyncthink::traces::{Conversation, TraceMode, synthesize};
use crate::backend::cpu::CpuBackend;
use crate::model::fresh::{Shape, fresh_model, save_fresh};
use crate::tasks::generate_items;
use crate::tasks::products::Products;
use crate::train::grpo::{Aggregation, RewardScale};
use crate::train::optim::OptimConfig;
use crate::train::plot::loss_curve_svg;
use crate::train::sft::{SftConfig, SftTrainer};
use crate::train::sft_data::load_jsonl;
use crate::util::write_atomic;
use crate::{Error, Result};
use report::{Row, Stage};

#[derive(Args, Debug)]
pub struct ExperimentArgs {
    /// Start from this checkpoint instead of a fresh model (its tokenizer should hold the
    /// tags as tokens for the critical path to count them as one step each).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "runs/experiment")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Fresh model: hidden size (heads of 32 dimensions, a quarter as many KV heads).
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Items the SFT traces and GRPO prompts are drawn from.
    #[arg(long, default_value_t = 4000)]
    pub train_items: usize,
    /// Held-out questions every method is measured on.
    #[arg(long, default_value_t = 400)]
    pub eval_items: usize,
    #[arg(long, default_value_t = 1000)]
    pub sft_steps: u64,
    #[arg(long, default_value_t = 4096)]
    pub sft_batch_tokens: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub sft_lr: f32,
    #[arg(long, default_value_t = 40)]
    pub grpo_steps: u64,
    #[arg(long, default_value_t = 8)]
    pub grpo_prompts: usize,
    #[arg(long, default_value_t = 8)]
    pub grpo_group: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub grpo_lr: f32,
    /// λ of the full reward (the λ = 0 ablation runs beside it).
    #[arg(long, default_value_t = 0.25)]
    pub lambda: f64,
    #[arg(long, default_value_t = 0.5)]
    pub tau: f64,
    /// Sampling temperature of rollouts and of every evaluation.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Questions run one at a time per method for wall-clock latency (0: none).
    #[arg(long, default_value_t = 40)]
    pub latency_questions: usize,
    /// Skip the two ablation runs (fixed-structure SFT, λ = 0 GRPO).
    #[arg(long)]
    pub no_ablations: bool,
}

/// Capacities the experiment trains and measures (organizer included).
const CAPACITIES: [usize; 2] = [2, 4];
/// The capacity GRPO trains at.
const GRPO_CAPACITY: usize = 4;

impl ExperimentArgs {
    fn validate(&self) -> Result<()> {
        use super::validate::*;
        at_least("--hidden", self.hidden, 32)?;
        if !self.hidden.is_multiple_of(32) {
            return Err(bad("--hidden", self.hidden, "must be a multiple of 32"));
        }
        at_least("--layers", self.layers, 1)?;
        at_least("--train-items", self.train_items, 8)?;
        at_least("--eval-items", self.eval_items, 1)?;
        at_least("--sft-steps", self.sft_steps, 1)?;
        at_least("--sft-batch-tokens", self.sft_batch_tokens, 256)?;
        positive("--sft-lr", self.sft_lr)?;
        at_least("--grpo-steps", self.grpo_steps, 1)?;
        at_least("--grpo-prompts", self.grpo_prompts, 1)?;
        at_least("--grpo-group", self.grpo_group, 2)?;
        positive("--grpo-lr", self.grpo_lr)?;
        non_negative("--lambda", self.lambda as f32)?;
        if !(self.tau > 0.0 && self.tau <= 1.0) {
            return Err(bad("--tau", self.tau, "must be in (0, 1]"));
        }
        non_negative("--temperature", self.temperature)
    }

    fn shape(&self) -> Shape {
        let heads = self.hidden / 32;
        Shape {
            hidden: self.hidden,
            layers: self.layers,
            heads,
            kv_heads: (heads / 2).max(1),
            head_dim: 32,
            intermediate: 3 * self.hidden,
            max_positions: 1024,
        }
    }

    fn model_args(&self, dir: &Path) -> ModelArgs {
        ModelArgs {
            model: Some(dir.to_path_buf()),
            threads: None,
            skip_weight_check: false,
            precision: Default::default(),
        }
    }

    fn executor(&self, capacity: usize, seed: u64) -> ExecutorArgs {
        ExecutorArgs {
            capacity,
            temperature: self.temperature,
            organizer_tokens: 384,
            worker_tokens: 128,
            max_steps: 4096,
            seed,
            kv: KvMemoryArgs::fixed_mb(512),
        }
    }
}

/// Every tag an organizer or worker can write, fork indices up to 8: one token each.
pub(super) fn tag_tokens() -> Vec<String> {
    ExecutorConfig::new(9).tag_strings()
}

/// SFT traces of the train items: AsyncThink traces at each capacity in `structure`, and
/// sequential ones (so the sequential and parallel baselines are run by a model that knows
/// their format). Returns the conversations and a description for the log.
fn traces(args: &ExperimentArgs, structure: TraceMode) -> (Vec<Conversation>, String) {
    let task = Products::default();
    let tags = ProtocolTags::default();
    let n = args.train_items;
    let mut all = Vec::new();
    let mut said = Vec::new();
    for c in CAPACITIES {
        let (convs, stats) = synthesize(&task, n, args.seed + 1, structure, c, &tags);
        said.push(format!(
            "{structure:?} c = {c}: {} conversations\n{stats}",
            convs.len()
        ));
        all.extend(convs);
    }
    let (seq, stats) = synthesize(&task, n, args.seed + 1, TraceMode::Sequential, 1, &tags);
    said.push(format!("sequential: {} conversations\n{stats}", seq.len()));
    all.extend(seq);
    (all, said.join("\n"))
}

/// Format SFT from `init` on `traces`; returns the loss curve. Saved to `dir`.
fn sft(
    args: &ExperimentArgs,
    init: &Path,
    traces_path: &Path,
    dir: &Path,
    what: &str,
) -> Result<Vec<(u64, f64)>> {
    let (model, tokenizer) = crate::model::ModelSource::Dir(init.to_path_buf())
        .load_for_training(CpuBackend::default())?;
    let max_len = 1024.min(model.config.max_position_embeddings);
    let data = load_jsonl(traces_path, &tokenizer, max_len)?;
    if let Some(msg) = crate::train::sft_data::describe_cuts(traces_path, &data, max_len) {
        eprintln!("{msg}");
    }
    let config = SftConfig {
        steps: args.sft_steps,
        max_len,
        batch_tokens: args.sft_batch_tokens,
        seed: args.seed,
        optim: OptimConfig {
            lr: args.sft_lr,
            warmup_steps: (args.sft_steps / 20).max(1),
            total_steps: args.sft_steps,
            ..OptimConfig::default()
        },
        ..SftConfig::default()
    };
    let files = crate::model::ModelSource::Dir(init.to_path_buf()).tokenizer_files()?;
    let mut trainer = SftTrainer::new(model, data, Vec::new(), config, files)?;
    let bar = super::progress::bar(args.sft_steps, what)?;
    let mut curve = Vec::new();
    let mut tokens_per_second = Vec::new();
    while !trainer.is_done() {
        let log = trainer.train_step()?;
        curve.push((log.step, log.loss));
        tokens_per_second.push(log.tokens_per_second);
        bar.set_message(format!(
            "loss {:.3}, {:.0} tok/s",
            log.loss, log.tokens_per_second
        ));
        bar.set_position(log.step);
    }
    bar.finish_and_clear();
    trainer.save(dir)?;
    let mean_tps = tokens_per_second.iter().sum::<f64>() / tokens_per_second.len().max(1) as f64;
    eprintln!(
        "{what}: {} steps, loss {:.3} -> {:.3}, {mean_tps:.0} tokens/s; saved {}",
        args.sft_steps,
        curve.first().map_or(f64::NAN, |c| c.1),
        curve.last().map_or(f64::NAN, |c| c.1),
        dir.display()
    );
    Ok(curve)
}

fn grpo(
    args: &ExperimentArgs,
    from: &Path,
    items: &Path,
    dir: &Path,
    lambda: f64,
) -> Result<Vec<crate::train::grpo_loop::GrpoStepLog>> {
    let grpo = GrpoArgs {
        model: args.model_args(from),
        tasks: items.to_path_buf(),
        task: TaskName::Products,
        out: dir.to_path_buf(),
        steps: args.grpo_steps,
        group_size: args.grpo_group,
        prompts_per_step: args.grpo_prompts,
        updates_per_batch: 1,
        lr: args.grpo_lr,
        clip_low: 0.2,
        clip_high: 0.28,
        kl_coef: 0.0,
        aggregation: Aggregation::TokenMean,
        reward_scale: RewardScale::Group,
        lambda,
        tau: args.tau,
        format_error_reward: -1.0,
        checkpoint_every: 0,
        device: args.device,
        graphs: CudaGraphArgs::on(),
        resume: None,
        executor: args.executor(GRPO_CAPACITY, args.seed),
    };
    run_with(&grpo)
}

/// One method on the held-out questions, all in one batch.
fn measure(
    args: &ExperimentArgs,
    model: &Path,
    eval_items: &Path,
    stage: Stage,
    mode: ThinkingMode,
    capacity: usize,
    samples: usize,
) -> Result<Row> {
    measure_with(
        args, model, eval_items, stage, mode, capacity, samples, None,
    )
}

/// `measure`, or with `alone` the first `alone` questions one at a time: their wall-clock
/// seconds are then each question's latency on the engine with nothing else running.
#[allow(clippy::too_many_arguments)]
fn measure_with(
    args: &ExperimentArgs,
    model: &Path,
    eval_items: &Path,
    stage: Stage,
    mode: ThinkingMode,
    capacity: usize,
    samples: usize,
    alone: Option<usize>,
) -> Result<Row> {
    let eval = EvalArgs {
        model: args.model_args(model),
        tasks: eval_items.to_path_buf(),
        task: TaskName::Products,
        mode,
        samples,
        limit: alone,
        executor: args.executor(capacity, args.seed.wrapping_add(7)),
        one_at_a_time: alone.is_some(),
        out: None,
        svg_dir: None,
        device: args.device,
        graphs: CudaGraphArgs::on(),
    };
    let (summary, outcomes, verdicts) = evaluate::<Products>(&eval, mode)?;
    let row = Row::new(
        stage, mode, capacity, samples, &summary, outcomes, &verdicts,
    );
    eprintln!("  {}", row.one_line());
    Ok(row)
}

pub fn run(args: ExperimentArgs) -> Result<()> {
    args.validate()?;
    ModelArgs {
        model: None,
        threads: args.threads,
        skip_weight_check: false,
        precision: Default::default(),
    }
    .init_threads()?;
    let out = &args.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let started = std::time::Instant::now();
    let mut timings = Vec::new();
    let mut lap = |what: &str, t: &mut std::time::Instant| {
        timings.push((what.to_string(), t.elapsed().as_secs_f64()));
        *t = std::time::Instant::now();
    };
    let mut t = std::time::Instant::now();

    // 1. The model to start from, and the questions.
    let init = out.join("init");
    match &args.model {
        Some(dir) => {
            if !dir.join("config.json").exists() {
                return Err(Error::InvalidInput(format!(
                    "--model {}: no config.json there",
                    dir.display()
                )));
            }
        }
        None => {
            let (model, _, files) = fresh_model(
                CpuBackend::default(),
                &args.shape(),
                &tag_tokens(),
                args.seed,
            )?;
            save_fresh(&model, &files, &init)?;
            eprintln!(
                "[1/5] fresh model: {} parameters ({:?}), tags as single tokens; saved {}",
                model.config.num_parameters(),
                args.shape(),
                init.display()
            );
        }
    }
    let init = args.model.clone().unwrap_or(init);
    let task = Products::default();
    let train_items = out.join("train_items.jsonl");
    let eval_items = out.join("eval_items.jsonl");
    jsonl(
        &train_items,
        &generate_items(&task, args.train_items, args.seed + 1),
    )?;
    // Another seed stream: held out from every trace and every GRPO prompt.
    jsonl(
        &eval_items,
        &generate_items(&task, args.eval_items, args.seed.wrapping_add(1_000_003)),
    )?;
    let random_traces = out.join("traces.jsonl");
    let (convs, said) = traces(&args, TraceMode::AsyncThink);
    jsonl(&random_traces, &convs)?;
    eprintln!(
        "[2/5] {} train and {} held-out questions; traces:\n{said}",
        args.train_items, args.eval_items
    );
    lap("data", &mut t);

    // 2. Format SFT: random structures (the method), one fixed structure (the ablation).
    let sft_dir = out.join("sft");
    let sft_curve = sft(
        &args,
        &init,
        &random_traces,
        &sft_dir,
        "[3/5] SFT, random structures",
    )?;
    write_atomic(
        &out.join("sft_loss.svg"),
        loss_curve_svg(&sft_curve, &[]).as_bytes(),
    )?;
    lap("sft", &mut t);
    let sft_fixed_dir = out.join("sft-fixed");
    if !args.no_ablations {
        let fixed_traces = out.join("traces-fixed.jsonl");
        let (convs, _) = traces(&args, TraceMode::AsyncThinkFixed);
        jsonl(&fixed_traces, &convs)?;
        sft(
            &args,
            &init,
            &fixed_traces,
            &sft_fixed_dir,
            "[3/5] SFT, one fixed structure (ablation)",
        )?;
        lap("sft-fixed", &mut t);
    }

    // 3. GRPO at c = 4: the full reward, and λ = 0.
    let grpo_dir = out.join("grpo");
    let logs = grpo(&args, &sft_dir, &train_items, &grpo_dir, args.lambda)?;
    eprintln!(
        "[4/5] GRPO (λ = {}): {} steps, mean reward {:+.3} -> {:+.3}; saved {}",
        args.lambda,
        logs.len(),
        logs.first().map_or(f64::NAN, |l| l.reward_mean),
        logs.last().map_or(f64::NAN, |l| l.reward_mean),
        grpo_dir.join("final").display()
    );
    lap("grpo", &mut t);
    let grpo0_dir = out.join("grpo-lambda0");
    let mut logs0 = Vec::new();
    if !args.no_ablations {
        logs0 = grpo(&args, &sft_dir, &train_items, &grpo0_dir, 0.0)?;
        eprintln!(
            "[4/5] GRPO (λ = 0, ablation): saved {}",
            grpo0_dir.join("final").display()
        );
        lap("grpo-lambda0", &mut t);
    }

    // 4. Every method on the held-out questions.
    eprintln!("[5/5] measuring on {} held-out questions", args.eval_items);
    let trained = grpo_dir.join("final");
    let mut rows = Vec::new();
    for c in CAPACITIES {
        rows.push(measure(
            &args,
            &trained,
            &eval_items,
            Stage::Grpo,
            ThinkingMode::Asyncthink,
            c,
            1,
        )?);
    }
    let sequential = measure(
        &args,
        &trained,
        &eval_items,
        Stage::Grpo,
        ThinkingMode::Sequential,
        1,
        1,
    )?;
    // Parallel thinking gets AsyncThink's token budget: as many whole samples as fit in it.
    let budget = rows.last().map_or(0.0, |r| r.total_tokens.mean);
    let samples = ((budget / sequential.total_tokens.mean.max(1.0)).round() as usize).max(2);
    rows.push(sequential);
    rows.push(measure(
        &args,
        &trained,
        &eval_items,
        Stage::Grpo,
        ThinkingMode::Parallel,
        1,
        samples,
    )?);
    for c in CAPACITIES {
        rows.push(measure(
            &args,
            &sft_dir,
            &eval_items,
            Stage::Sft,
            ThinkingMode::Asyncthink,
            c,
            1,
        )?);
    }
    rows.push(measure(
        &args,
        &sft_dir,
        &eval_items,
        Stage::Sft,
        ThinkingMode::Sequential,
        1,
        1,
    )?);
    if !args.no_ablations {
        rows.push(measure(
            &args,
            &grpo0_dir.join("final"),
            &eval_items,
            Stage::GrpoLambda0,
            ThinkingMode::Asyncthink,
            GRPO_CAPACITY,
            1,
        )?);
        rows.push(measure(
            &args,
            &sft_fixed_dir,
            &eval_items,
            Stage::SftFixed,
            ThinkingMode::Asyncthink,
            GRPO_CAPACITY,
            1,
        )?);
    }
    // Wall-clock latency of a question alone on the engine: the executor adds nothing to
    // the critical path, so latency ratios should follow critical-path ratios.
    let alone = args.latency_questions.min(args.eval_items);
    let mut latency = Vec::new();
    if alone > 0 {
        for (mode, capacity, n) in [
            (ThinkingMode::Asyncthink, GRPO_CAPACITY, 1),
            (ThinkingMode::Sequential, 1, 1),
            (ThinkingMode::Parallel, 1, samples),
        ] {
            let row = measure_with(
                &args,
                &trained,
                &eval_items,
                Stage::Grpo,
                mode,
                capacity,
                n,
                Some(alone),
            )?;
            latency.push(report::Latency::of(&row));
        }
        let text = report::latency_table(&latency);
        eprintln!("{text}");
        write_atomic(&out.join("latency.md"), text.as_bytes())?;
    }
    lap("eval", &mut t);

    // 5. The table, the pictures, everything as JSON.
    let table = report::table(&rows);
    println!("{table}");
    write_atomic(&out.join("table.md"), table.as_bytes())?;
    pictures::write_all(out, &rows)?;
    let results = json!({
        "seconds": started.elapsed().as_secs_f64(),
        "timings": timings,
        "settings": {
            "seed": args.seed, "shape": args.shape(), "fresh": args.model.is_none(),
            "train_items": args.train_items, "eval_items": args.eval_items,
            "sft_steps": args.sft_steps, "sft_batch_tokens": args.sft_batch_tokens, "sft_lr": args.sft_lr,
            "grpo_steps": args.grpo_steps, "grpo_prompts": args.grpo_prompts, "grpo_group": args.grpo_group,
            "grpo_lr": args.grpo_lr, "lambda": args.lambda, "tau": args.tau, "temperature": args.temperature,
            "parallel_samples": samples,
        },
        "sft_loss_first": sft_curve.first().map(|c| c.1), "sft_loss_last": sft_curve.last().map(|c| c.1),
        "grpo": logs,
        "grpo_lambda0": logs0,
        "rows": rows.iter().map(Row::summary_json).collect::<Vec<_>>(),
        "latency_alone": latency,
    });
    write_atomic(
        &out.join("results.json"),
        serde_json::to_string_pretty(&results)?.as_bytes(),
    )?;
    eprintln!(
        "done in {:.0} s: {}/table.md, results.json, latency_accuracy.svg, timelines before/after GRPO, structures.svg, sft_loss.svg, grpo/reward.svg",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh model today gets the tokenizer the committed model was trained with, so a
    /// rerun of the experiment reproduces it and the embedded default stays its tokenizer.
    #[test]
    fn fresh_tokenizer_is_the_committed_models() {
        let (_, files, vocab) = crate::model::fresh::tokenizer_with(&tag_tokens()).unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/asyncthink-products");
        for (name, bytes) in files {
            let committed = std::fs::read(dir.join(&name)).unwrap();
            assert!(
                committed == bytes,
                "{name} differs from the committed model's"
            );
        }
        let config = crate::model::Qwen3Config::from_file(&dir.join("config.json")).unwrap();
        assert_eq!(config.vocab_size, vocab);
    }
}
