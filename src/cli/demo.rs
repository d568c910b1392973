//! `asyncthink demo`: the whole AsyncThink pipeline at a tiny scale, on the CPU, with
//! nothing downloaded: task items and cold-start fork/join traces → format SFT → GRPO →
//! AsyncThink against sequential and parallel thinking, as a table and pictures.
//! It starts from a fresh 0.1M-parameter Qwen3 (random weights, the protocol tags as single
//! tokens), or from the checkpoint `--model DIR` names.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use super::data::TaskName;
use super::eval::{EvalArgs, EvalSummary, evaluate};
use super::grpo::{GrpoArgs, run_with};
use super::think::ExecutorArgs;
use super::{KvMemoryArgs, ModelArgs};
use crate::asyncthink::executor::ThinkingMode;
use crate::asyncthink::executor::svg::{forks_histogram_svg, timeline_svg};
use crate::asyncthink::protocol::ProtocolTags;
use crate::asyncthink::traces::{TraceMode, synthesize};
use crate::backend::cpu::CpuBackend;
use crate::model::fresh::{Shape, fresh_model, save_fresh};
use crate::tasks::arithmetic::Arithmetic;
use crate::tasks::generate_items;
use crate::train::grpo::{Aggregation, RewardScale};
use crate::train::optim::OptimConfig;
use crate::train::plot::loss_curve_svg;
use crate::train::sft::{SftConfig, SftTrainer};
use crate::train::sft_data::load_jsonl;
use crate::util::write_atomic;
use crate::{Error, Result};

/// The demo's fresh model: the size of the tiny test fixtures, so the whole pipeline runs in
/// minutes on two cores.
const FRESH_SHAPE: Shape = Shape {
    hidden: 64,
    layers: 2,
    heads: 4,
    kv_heads: 1,
    head_dim: 16,
    intermediate: 128,
    max_positions: 512,
};

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 3)]
    pub capacity: usize,
    #[arg(long, default_value_t = 256)]
    pub traces: usize,
    #[arg(long, default_value_t = 1000)]
    pub sft_steps: u64,
    #[arg(long, default_value_t = 6)]
    pub grpo_steps: u64,
    #[arg(long, default_value_t = 64)]
    pub train_items: usize,
    #[arg(long, default_value_t = 24)]
    pub eval_items: usize,
    /// Sampling temperature of the evaluation (rollouts sample at 0.7).
    #[arg(long, default_value_t = 0.7)]
    pub eval_temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Rows as JSON lines, written atomically.
pub(super) fn jsonl<T: serde::Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

fn executor(capacity: usize, seed: u64, temperature: f32) -> ExecutorArgs {
    ExecutorArgs {
        capacity,
        temperature,
        organizer_tokens: 256,
        worker_tokens: 64,
        max_steps: 2048,
        seed,
        kv: KvMemoryArgs::fixed_mb(256),
    }
}

fn eval_all(
    model: ModelArgs,
    tasks: &Path,
    capacity: usize,
    seed: u64,
    temperature: f32,
    modes: &[ThinkingMode],
) -> Result<
    Vec<(
        EvalSummary,
        Vec<crate::asyncthink::executor::QuestionOutcome>,
    )>,
> {
    let mut out = Vec::new();
    for &mode in modes {
        let args = EvalArgs {
            model: model.clone(),
            tasks: tasks.to_path_buf(),
            task: TaskName::Arithmetic,
            mode,
            samples: capacity,
            limit: None,
            executor: executor(capacity, seed, temperature),
            one_at_a_time: false,
            out: None,
            svg_dir: None,
            device: super::Device::Cpu,
            graphs: super::CudaGraphArgs::on(),
        };
        let (summary, outcomes, _) = evaluate::<Arithmetic>(&args, mode)?;
        out.push((summary, outcomes));
    }
    Ok(out)
}

impl DemoArgs {
    /// Every flag, before any stage runs.
    fn validate(&self) -> Result<()> {
        use super::validate::*;
        self.model.validate()?;
        if self.capacity < 2 {
            return Err(bad(
                "--capacity",
                self.capacity,
                "the demo needs at least 2 (organizer and a worker)",
            ));
        }
        // Half the traces are held out for evaluation: at least one each way.
        at_least("--traces", self.traces, 2)?;
        at_least("--sft-steps", self.sft_steps, 1)?;
        at_least("--grpo-steps", self.grpo_steps, 1)?;
        at_least("--train-items", self.train_items, 1)?;
        at_least("--eval-items", self.eval_items, 1)?;
        non_negative("--eval-temperature", self.eval_temperature)
    }
}

pub fn run(args: DemoArgs) -> Result<()> {
    args.validate()?;
    args.model.init_threads()?;
    let out = &args.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let started = std::time::Instant::now();
    let task = Arithmetic::tiny();

    // 1. Task items (train and held-out) and cold-start traces.
    let train_path = out.join("train_items.jsonl");
    let eval_path = out.join("eval_items.jsonl");
    jsonl(
        &train_path,
        &generate_items(&task, args.train_items, args.seed.wrapping_add(1)),
    )?;
    jsonl(
        &eval_path,
        &generate_items(&task, args.eval_items, args.seed.wrapping_add(1_000_003)),
    )?;
    let (mut convs, stats) = synthesize(
        &task,
        args.traces,
        args.seed.wrapping_add(2),
        TraceMode::AsyncThink,
        args.capacity,
        &ProtocolTags::default(),
    );
    // Sequential traces too (their own system prompt), so the sequential and parallel
    // baselines are run by a model that has learned their format, not judged on one it
    // never saw.
    let (sequential, _) = synthesize(
        &task,
        args.traces / 2,
        args.seed.wrapping_add(3),
        TraceMode::Sequential,
        args.capacity,
        &ProtocolTags::default(),
    );
    let asyncthink_conversations = convs.len();
    convs.extend(sequential);
    let traces_path = out.join("traces.jsonl");
    jsonl(&traces_path, &convs)?;
    eprintln!(
        "[1/4] {} train and {} eval items; {} AsyncThink and {} sequential trace conversations\n{stats}",
        args.train_items,
        args.eval_items,
        asyncthink_conversations,
        convs.len() - asyncthink_conversations
    );

    // 2. Format SFT, from a fresh model unless --model names one.
    let start = match &args.model.model {
        Some(dir) => dir.clone(),
        None => {
            let init = out.join("init");
            let (model, _, files) = fresh_model(
                CpuBackend::new(args.model.precision),
                &FRESH_SHAPE,
                &super::experiment::tag_tokens(),
                args.seed,
            )?;
            save_fresh(&model, &files, &init)?;
            eprintln!(
                "      fresh model: {} parameters, tags as single tokens; saved {}",
                model.config.num_parameters(),
                init.display()
            );
            init
        }
    };
    let start_model = ModelArgs {
        model: Some(start),
        ..args.model.clone()
    };
    let source = start_model.source();
    let (model, tokenizer) = source.load_for_training(CpuBackend::new(args.model.precision))?;
    // Never past the model's positions (the tiny default has 512): longer traces are cut,
    // and the run says so.
    let max_len = 1024.min(model.config.max_position_embeddings);
    let data = load_jsonl(&traces_path, &tokenizer, max_len)?;
    if let Some(msg) = crate::train::sft_data::describe_cuts(&traces_path, &data, max_len) {
        eprintln!("{msg}");
    }
    let config = SftConfig {
        steps: args.sft_steps,
        max_len,
        batch_tokens: 2048,
        seed: args.seed,
        optim: OptimConfig {
            lr: 3e-3,
            warmup_steps: 10,
            total_steps: args.sft_steps,
            ..OptimConfig::default()
        },
        ..SftConfig::default()
    };
    let mut sft = SftTrainer::new(model, data, Vec::new(), config, source.tokenizer_files()?)?;
    let mut curve = Vec::new();
    let bar = super::progress::bar(args.sft_steps, "SFT steps")?;
    while !sft.is_done() {
        let log = sft.train_step()?;
        curve.push((log.step, log.loss));
        bar.set_message(format!("loss {:.3}", log.loss));
        bar.set_position(log.step);
    }
    bar.finish_and_clear();
    let sft_dir = out.join("sft");
    sft.save(&sft_dir)?;
    write_atomic(
        &out.join("sft_loss.svg"),
        loss_curve_svg(&curve, &[]).as_bytes(),
    )?;
    eprintln!(
        "[2/4] SFT: {} steps, loss {:.3} -> {:.3}",
        args.sft_steps,
        curve.first().map_or(f64::NAN, |c| c.1),
        curve.last().map_or(f64::NAN, |c| c.1)
    );
    drop(sft);

    // 3. GRPO from the SFT checkpoint.
    let grpo_dir = out.join("grpo");
    let grpo = GrpoArgs {
        model: ModelArgs {
            model: Some(sft_dir.clone()),
            threads: None,
            skip_weight_check: args.model.skip_weight_check,
            precision: args.model.precision,
        },
        tasks: train_path,
        task: TaskName::Arithmetic,
        out: grpo_dir.clone(),
        steps: args.grpo_steps,
        group_size: 4,
        prompts_per_step: 4,
        updates_per_batch: 1,
        lr: 5e-5,
        clip_low: 0.2,
        clip_high: 0.28,
        kl_coef: 0.0,
        aggregation: Aggregation::TokenMean,
        reward_scale: RewardScale::Group,
        lambda: 0.25,
        tau: 0.5,
        format_error_reward: -1.0,
        checkpoint_every: 0,
        device: super::Device::Cpu,
        graphs: super::CudaGraphArgs::on(),
        resume: None,
        executor: executor(args.capacity, args.seed, 0.7),
    };
    let logs = run_with(&grpo)?;
    eprintln!(
        "[3/4] GRPO: {} steps, mean reward {:+.3} -> {:+.3}",
        logs.len(),
        logs.first().map_or(f64::NAN, |l| l.reward_mean),
        logs.last().map_or(f64::NAN, |l| l.reward_mean)
    );

    // 4. The untrained model against the trained one, and the trained one's baselines.
    let base = eval_all(
        start_model.clone(),
        &eval_path,
        args.capacity,
        args.seed,
        args.eval_temperature,
        &[ThinkingMode::Asyncthink],
    )?;
    let sft_only = eval_all(
        ModelArgs {
            model: Some(sft_dir.clone()),
            threads: None,
            skip_weight_check: args.model.skip_weight_check,
            precision: args.model.precision,
        },
        &eval_path,
        args.capacity,
        args.seed,
        args.eval_temperature,
        &[ThinkingMode::Asyncthink],
    )?;
    let trained_model = ModelArgs {
        model: Some(grpo_dir.join("final")),
        threads: None,
        skip_weight_check: args.model.skip_weight_check,
        precision: args.model.precision,
    };
    let trained = eval_all(
        trained_model,
        &eval_path,
        args.capacity,
        args.seed,
        args.eval_temperature,
        &[
            ThinkingMode::Asyncthink,
            ThinkingMode::Sequential,
            ThinkingMode::Parallel,
        ],
    )?;
    let mut rows = vec![
        ("untrained".to_string(), &base[0].0),
        ("SFT".to_string(), &sft_only[0].0),
    ];
    rows.extend(trained.iter().map(|(s, _)| ("SFT + GRPO".to_string(), s)));
    let mut table = String::from(
        "| model | mode | accuracy | format-valid | critical path (tokens) | concurrency η | tokens / question |\n|---|---|---|---|---|---|---|\n",
    );
    for (who, s) in &rows {
        table.push_str(&format!(
            "| {who} | {:?} | {:.3} | {:.3} | {:.1} | {:.2} | {:.1} |\n",
            s.mode,
            s.accuracy,
            s.format_valid_rate,
            s.mean_critical_path_tokens,
            s.mean_concurrency,
            s.mean_total_tokens
        ));
    }
    println!("{table}");
    write_atomic(&out.join("table.md"), table.as_bytes())?;
    let episodes: Vec<_> = trained[0]
        .1
        .iter()
        .flat_map(|o| o.episodes.iter().cloned())
        .collect();
    write_atomic(
        &out.join("forks.svg"),
        forks_histogram_svg(&episodes).as_bytes(),
    )?;
    // The picture: the valid episode with the most forks (any episode if none is valid).
    let pictured = episodes
        .iter()
        .filter(|e| !e.record.has_format_error())
        .max_by_key(|e| e.forks)
        .or_else(|| episodes.iter().max_by_key(|e| e.forks));
    if let Some(e) = pictured {
        write_atomic(&out.join("timeline.svg"), timeline_svg(e).as_bytes())?;
    }
    let results = json!({
        "seconds": started.elapsed().as_secs_f64(),
        "settings": { "capacity": args.capacity, "traces": args.traces, "sft_steps": args.sft_steps, "grpo_steps": args.grpo_steps, "seed": args.seed },
        "sft_loss_first": curve.first().map(|c| c.1), "sft_loss_last": curve.last().map(|c| c.1),
        "grpo": logs,
        "eval": rows.iter().map(|(who, s)| json!({ "model": who, "summary": s })).collect::<Vec<_>>(),
    });
    write_atomic(
        &out.join("results.json"),
        serde_json::to_string_pretty(&results)?.as_bytes(),
    )?;
    eprintln!(
        "[4/4] results in {} ({:.0} s): table.md, results.json, timeline.svg, forks.svg, sft_loss.svg, grpo/reward.svg",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
