//! `asyncthink bench-executor`: what the AsyncThink executor costs on top of the engine.
//! A scripted policy (forced tokens through the real engine) makes the fork/join graph
//! fixed, so the figures measure the executor, not the model's choices:
//! - one episode's wall-clock latency against its critical path × the engine's step time;
//! - episodes/s and generated tokens/s for a batch of questions at each capacity, against
//!   the plain engine decoding as many sequences (GRPO rollouts are these batches).
//!
//! Every timing is the median of several runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::ModelArgs;
use super::bench::write_report;
use crate::asyncthink::executor::{EpisodeOutcome, ExecutorConfig, Script, run_episodes};
use crate::backend::cpu::CpuBackend;
use crate::engine::{Engine, EngineConfig, EngineStats, SamplingParams};
use crate::model::Qwen3;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

#[derive(Args, Debug)]
pub struct BenchExecutorArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Questions decoded together in the throughput measurement.
    #[arg(long, default_value_t = 64)]
    pub questions: usize,
    /// Pool capacities to measure, comma-separated.
    #[arg(long, default_value = "2,4")]
    pub capacities: String,
    /// Thinking words each worker writes before its RETURN.
    #[arg(long, default_value_t = 24)]
    pub worker_words: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Question `i`'s scripted episode: fork every worker, think while they run, join them in
/// reverse order, answer. Workers get different lengths so joins wait on each other.
fn script(i: usize, capacity: usize, worker_words: usize) -> Script {
    let workers = capacity.saturating_sub(1) as u32;
    let mut organizer = format!("Plan for question {i}.\n");
    for k in 1..=workers {
        organizer.push_str(&format!("<FORK-{k}>part {k} of question {i}</FORK-{k}>\n"));
    }
    organizer.push_str("While they work I check the plan once more.\n");
    for k in (1..=workers).rev() {
        organizer.push_str(&format!("<JOIN-{k}> noted.\n"));
    }
    organizer.push_str(&format!("<ANSWER>{i}</ANSWER>"));
    let worker_text = |k: u32| {
        let n = worker_words + 4 * k as usize + i % 5;
        let words: Vec<String> = (0..n).map(|j| format!("s{j}")).collect();
        format!("{} <RETURN>r{k}</RETURN>", words.join(" "))
    };
    Script {
        organizer,
        workers: (1..=workers)
            .map(|k| (k, worker_text(k)))
            .collect::<HashMap<_, _>>(),
    }
}

fn engine_config(sequences: usize) -> EngineConfig {
    EngineConfig {
        num_blocks: sequences * 24,
        max_num_seqs: sequences.max(1),
        max_batched_tokens: 4096,
        ..EngineConfig::default()
    }
}

/// The median of `runs` measurements of `f` (this machine's timings jitter by ±20%).
fn median_of<T>(runs: usize, f: impl Fn() -> Result<T>, key: impl Fn(&T) -> f64) -> Result<T> {
    let mut all = (0..runs).map(|_| f()).collect::<Result<Vec<T>>>()?;
    all.sort_by(|a, b| key(a).total_cmp(&key(b)));
    Ok(all.swap_remove(runs / 2))
}

/// Mean seconds of one decode step of the plain engine with `sequences` sequences of a
/// `prompt_len`-token context (prefill excluded).
fn plain_step_seconds(
    model: &Qwen3<CpuBackend>,
    sequences: usize,
    prompt_len: usize,
    steps: usize,
) -> Result<(f64, f64)> {
    let mut engine = Engine::new(model, None, engine_config(sequences))?;
    for s in 0..sequences {
        let prompt: Vec<u32> = (0..prompt_len)
            .map(|j| ((s * 131 + j * 7) % 400) as u32)
            .collect();
        let params = SamplingParams {
            max_new_tokens: steps + 1,
            ignore_eos: true,
            ..Default::default()
        };
        engine.add_request(prompt, params)?;
    }
    engine.step()?; // prefill
    let started = Instant::now();
    let before = engine.stats.generated_tokens;
    let mut n = 0;
    while engine.has_unfinished() {
        engine.step()?;
        n += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let tokens = (engine.stats.generated_tokens - before) as f64;
    Ok((seconds / n.max(1) as f64, tokens / seconds.max(1e-9)))
}

fn run_batch(
    model: &Qwen3<CpuBackend>,
    tokenizer: &Tokenizer,
    capacity: usize,
    scripts: &[Script],
) -> Result<(Vec<EpisodeOutcome>, f64, EngineStats)> {
    let questions: Vec<String> = (0..scripts.len())
        .map(|i| format!("Question {i}: add the parts."))
        .collect();
    let mut engine = Engine::new(
        model,
        Some(tokenizer),
        engine_config(scripts.len() * capacity),
    )?;
    let mut cfg = ExecutorConfig::new(capacity);
    cfg.organizer.max_new_tokens = 1024;
    cfg.worker.max_new_tokens = 512;
    let started = Instant::now();
    let outs = run_episodes(&mut engine, tokenizer, &cfg, &questions, Some(scripts), 0)?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(bad) = outs.iter().find(|o| o.record.has_format_error()) {
        return Err(Error::InvalidInput(format!(
            "the scripted episode failed: {:?}",
            bad.record.format_errors
        )));
    }
    Ok((outs, seconds, engine.stats.clone()))
}

pub fn run(args: BenchExecutorArgs) -> Result<()> {
    args.model.validate()?;
    let capacities = super::parse_usize_list("--capacities", &args.capacities, 2)?;
    super::validate::at_least("--questions", args.questions, 1)?;
    args.model.init_threads()?;
    let source = args.model.source();
    let (model, tokenizer) = source.load(args.model.cpu_backend())?;

    let mut rows = Vec::new();
    // Four measurements per capacity: one episode, the plain engine at its width, a batch of
    // questions, the plain engine at the batch's width.
    let bar = super::progress::bar(4 * capacities.len() as u64, "measurements")?;
    for &capacity in &capacities {
        bar.set_message(format!("capacity {capacity}: one episode"));
        // One episode alone: executor latency against critical path × step time.
        let (single, wall, single_stats) = median_of(
            5,
            || {
                run_batch(
                    &model,
                    &tokenizer,
                    capacity,
                    &[script(0, capacity, args.worker_words)],
                )
            },
            |r| r.1,
        )?;
        let episode = &single[0];
        // The plain engine with as many sequences as the episode kept active on average.
        let active = (episode.total_tokens as f64 / single_stats.steps.max(1) as f64)
            .round()
            .max(1.0) as usize;
        bar.inc(1);
        bar.set_message(format!(
            "capacity {capacity}: plain engine at {active} sequences"
        ));
        let (step_seconds, _) =
            median_of(5, || plain_step_seconds(&model, active, 96, 64), |r| r.0)?;
        bar.inc(1);
        bar.set_message(format!("capacity {capacity}: {} questions", args.questions));
        let ideal = episode.critical_path_tokens as f64 * step_seconds;

        // A batch of questions: episodes/s, and tokens/s against the plain engine decoding
        // as many sequences as the batch keeps active on average.
        let scripts: Vec<Script> = (0..args.questions)
            .map(|i| script(i, capacity, args.worker_words))
            .collect();
        let (outs, seconds, stats) = median_of(
            3,
            || run_batch(&model, &tokenizer, capacity, &scripts),
            |r| r.1,
        )?;
        let batch_steps = stats.steps;
        let generated: usize = outs.iter().map(|o| o.total_tokens).sum();
        let mean_active = (generated as f64 / batch_steps.max(1) as f64)
            .round()
            .max(1.0);
        bar.inc(1);
        bar.set_message(format!(
            "capacity {capacity}: plain engine at {mean_active} sequences"
        ));
        let (_, plain_tok_s) = median_of(
            3,
            || plain_step_seconds(&model, mean_active as usize, 96, 64),
            |r| r.1,
        )?;
        bar.inc(1);
        let tok_s = generated as f64 / seconds;
        let row = json!({
            "capacity": capacity,
            "single_episode": {
                "wall_seconds": wall,
                "engine_steps": single_stats.steps,
                "critical_path_tokens": episode.critical_path_tokens,
                "plain_engine_step_seconds": step_seconds,
                "critical_path_x_step_seconds": ideal,
                "wall_over_critical_path_x_step": wall / ideal,
                "concurrency": episode.record.concurrency,
                "mean_active_sequences": active,
                "engine_forward_seconds": single_stats.forward_seconds,
                "outside_forward_fraction": 1.0 - single_stats.forward_seconds / wall,
                "wall_over_forward": wall / single_stats.forward_seconds.max(1e-12),
                "steps_over_critical_path": single_stats.steps as f64 / episode.critical_path_tokens.max(1) as f64,
            },
            "batch": {
                "questions": args.questions,
                "seconds": seconds,
                "episodes_per_second": args.questions as f64 / seconds,
                "generated_tokens": generated,
                "generated_tok_s": tok_s,
                "engine_steps": batch_steps,
                "mean_active_sequences": mean_active,
                "plain_engine_tok_s_at_that_batch": plain_tok_s,
                "executor_over_plain_engine": tok_s / plain_tok_s,
                "engine_forward_seconds": stats.forward_seconds,
                // Time not in the model's forward: scheduling, sampling, tag parsing,
                // tokenizing, worker creation.
                "outside_forward_fraction": 1.0 - stats.forward_seconds / seconds,
                "prefix_hit_rate": stats.prefix_hit_rate(),
                "prompt_tokens": stats.prompt_tokens,
                "computed_tokens": stats.computed_tokens,
            },
        });
        bar.suspend(|| eprintln!(
            "c={capacity}: one episode {:.3} s vs critical path {} × {:.2} ms = {:.3} s ({:.2}×); \
             {} questions {:.2} episodes/s, {:.0} tok/s = {:.0}% of the plain engine at {} seqs, \
             {:.0}% of the time outside the forward",
            wall,
            episode.critical_path_tokens,
            step_seconds * 1e3,
            ideal,
            wall / ideal,
            args.questions,
            args.questions as f64 / seconds,
            tok_s,
            100.0 * tok_s / plain_tok_s,
            mean_active,
            100.0 * (1.0 - stats.forward_seconds / seconds)
        ));
        rows.push(row);
    }
    bar.finish_and_clear();
    let figures = json!({
        "worker_words": args.worker_words,
        "results": rows,
    });
    write_report(&source.describe(), figures, args.out.as_deref())
}
