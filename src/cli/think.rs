//! `asyncthink think`: one question through the AsyncThink executor, with its trace as
//! JSON and its timeline as SVG.

use std::path::PathBuf;

use clap::Args;

use super::{CudaGraphArgs, Device, KvMemoryArgs, ModelArgs};
use crate::Result;
use crate::asyncthink::executor::svg::timeline_svg;
use crate::asyncthink::executor::{ExecutorConfig, run_episodes};
use crate::backend::Backend;
use crate::engine::{Engine, EngineConfig};
use crate::util::{prepare_output, write_atomic};

#[derive(Args, Debug, Clone)]
pub struct ExecutorArgs {
    /// Agents in the pool, organizer included (4, what the embedded model was trained with;
    /// the demo's models use 3).
    #[arg(long, default_value_t = 4)]
    pub capacity: usize,
    /// Sampling temperature (the demo's 0.7 by default).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 512, value_parser = super::token_budget())]
    pub organizer_tokens: usize,
    #[arg(long, default_value_t = 256, value_parser = super::token_budget())]
    pub worker_tokens: usize,
    #[arg(long, default_value_t = 4096)]
    pub max_steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub kv: KvMemoryArgs,
}

impl ExecutorArgs {
    pub fn config(&self) -> ExecutorConfig {
        let mut c = ExecutorConfig::new(self.capacity);
        c.organizer.temperature = self.temperature;
        c.worker.temperature = self.temperature;
        c.organizer.max_new_tokens = self.organizer_tokens;
        c.worker.max_new_tokens = self.worker_tokens;
        c.max_steps = self.max_steps;
        c
    }
}

#[derive(Args, Debug)]
pub struct ThinkArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub prompt: String,
    /// Where the model runs: cpu, or cuda (GPU 0).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    #[command(flatten)]
    pub graphs: CudaGraphArgs,
    #[command(flatten)]
    pub executor: ExecutorArgs,
    /// The episode (texts, graph, timeline, metrics) as JSON.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// The timeline as SVG.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

pub fn run(args: ThinkArgs) -> Result<()> {
    args.model.validate()?;
    args.graphs.validate()?;
    args.executor.validate()?;
    args.model.init_threads()?;
    // Before the episode, not after it.
    for p in args.trace.iter().chain(&args.svg) {
        prepare_output(p)?;
    }
    on_device!(args.device, args.model.precision, args.graphs, backend => run_on(args, backend))
}

fn run_on<B: Backend>(args: ThinkArgs, backend: B) -> Result<()> {
    let (model, mut tokenizer) = args.model.source().load(backend)?;
    let cfg = args.executor.config();
    register_tags(&mut tokenizer, &cfg, model.config.vocab_size);
    let engine_cfg = args.executor.kv.apply(EngineConfig::default(), &model)?;
    let mut engine = Engine::new(&model, Some(&tokenizer), engine_cfg)?;
    let out = run_episodes(
        &mut engine,
        &tokenizer,
        &cfg,
        std::slice::from_ref(&args.prompt),
        None,
        args.executor.seed,
    )?;
    let Some(ep) = out.first() else { return Ok(()) };
    println!("{}", ep.record.organizer_text);
    println!("---");
    println!(
        "answer: {}",
        ep.record.final_answer.as_deref().unwrap_or("(none)")
    );
    for e in &ep.record.format_errors {
        println!("format error: {e}");
    }
    println!(
        "critical path {} tokens, {} tokens in all, {} forks, thinking concurrency η {:.2} (mean \
         active agents; η/c {:.2} of the capacity), {} steps, {:.2} s",
        ep.critical_path_tokens,
        ep.total_tokens,
        ep.forks,
        ep.record.concurrency,
        ep.concurrency_ratio,
        ep.record.wall_clock_steps,
        ep.wall_seconds
    );
    if let Some(p) = &args.trace {
        write_atomic(p, serde_json::to_string_pretty(ep)?.as_bytes())?;
    }
    if let Some(p) = &args.svg {
        write_atomic(p, timeline_svg(ep).as_bytes())?;
    }
    Ok(())
}

/// Makes each tag one token when the tokenizer and the model have room for them. A model
/// without spare embedding rows keeps them as plain text: said once per process, in words a
/// newcomer can act on (a demo or GRPO run registers tags many times).
pub fn register_tags(
    tokenizer: &mut crate::tokenizer::Tokenizer,
    cfg: &ExecutorConfig,
    vocab: usize,
) {
    static NOTED: std::sync::Once = std::sync::Once::new();
    match tokenizer.add_special_tokens(&cfg.tag_strings(), vocab) {
        Ok(0) => {}
        Ok(n) => NOTED.call_once(|| eprintln!("registered {n} protocol tags as special tokens")),
        Err(e) => NOTED.call_once(|| {
            let why = match e {
                crate::Error::Tokenizer(msg) => msg,
                other => other.to_string(),
            };
            eprintln!(
                "note: the AsyncThink tags (<FORK-i>, <JOIN-i>, <ANSWER>, ...) are read as plain \
                 text, a few tokens each, because the model has no spare embedding rows for them \
                 ({why}). Everything works the same; a checkpoint with room for them in its \
                 vocabulary would spend one token per tag."
            )
        }),
    }
}
