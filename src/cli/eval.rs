//! `asyncthink eval`: a task file (from `data gen`) through AsyncThink or a baseline,
//! printing accuracy, format-valid rate, critical-path latency and concurrency.

use std::path::PathBuf;

use clap::Args;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::data::TaskName;
use super::think::{ExecutorArgs, register_tags};
use super::{CudaGraphArgs, Device, ModelArgs};
use crate::asyncthink::executor::svg::{forks_histogram_svg, timeline_svg};
use crate::asyncthink::executor::{QuestionOutcome, ThinkingMode, run_mode};
use crate::backend::Backend;
use crate::engine::{Engine, EngineConfig};
use crate::tasks::arithmetic::Arithmetic;
use crate::tasks::countdown::Countdown;
use crate::tasks::multi_countdown::MultiCountdown;
use crate::tasks::products::Products;
use crate::tasks::sudoku::Sudoku;
use crate::tasks::{Task, Verdict};
use crate::util::{prepare_output, prepare_output_dir, write_atomic};
use crate::{Error, Result};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Items written by `asyncthink data gen` (a file with none is an error).
    #[arg(long)]
    pub tasks: PathBuf,
    #[arg(long, value_enum)]
    pub task: TaskName,
    #[arg(long, value_enum, default_value = "asyncthink")]
    pub mode: ThinkingMode,
    /// Samples per question for parallel thinking.
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
    /// Evaluate only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub executor: ExecutorArgs,
    /// Run the questions one after another instead of all in one batch, so each one's
    /// wall-clock seconds are its latency alone on the engine.
    #[arg(long)]
    pub one_at_a_time: bool,
    /// Per-question results as JSONL.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Directory for SVG pictures (first episode's timeline, forks histogram).
    #[arg(long)]
    pub svg_dir: Option<PathBuf>,
    /// Where the model runs: cpu, or cuda (GPU 0).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    #[command(flatten)]
    pub graphs: CudaGraphArgs,
}

/// Summary of a mode over a task file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalSummary {
    pub mode: ThinkingMode,
    pub questions: usize,
    pub accuracy: f64,
    pub format_valid_rate: f64,
    pub mean_critical_path_tokens: f64,
    pub mean_concurrency: f64,
    pub mean_total_tokens: f64,
    pub seconds: f64,
}

fn load_items<T: Task>(path: &PathBuf, limit: Option<usize>) -> Result<Vec<T::Item>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut items = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        items.push(
            serde_json::from_str::<T::Item>(line)
                .map_err(|e| Error::InvalidInput(format!("{}:{}: {e}", path.display(), i + 1)))?,
        );
    }
    items.truncate(limit.unwrap_or(usize::MAX));
    Ok(items)
}

/// Runs `items` in `mode` and judges the answers with `T`'s verifier.
pub fn evaluate<T: Task>(
    args: &EvalArgs,
    mode: ThinkingMode,
) -> Result<(EvalSummary, Vec<QuestionOutcome>, Vec<Verdict>)>
where
    T::Item: DeserializeOwned,
{
    on_device!(args.device, args.model.precision, args.graphs, backend => evaluate_on::<T, _>(args, mode, backend))
}

fn evaluate_on<T: Task, B: Backend>(
    args: &EvalArgs,
    mode: ThinkingMode,
    backend: B,
) -> Result<(EvalSummary, Vec<QuestionOutcome>, Vec<Verdict>)>
where
    T::Item: DeserializeOwned,
{
    let items = load_items::<T>(&args.tasks, args.limit)?;
    // Means over no questions would print as 0 (or -0.0): a blank file is an error instead.
    if items.is_empty() {
        return Err(Error::InvalidInput(format!(
            "nothing to evaluate: {} has no items",
            args.tasks.display()
        )));
    }
    let (model, mut tokenizer) = args.model.source().load(backend)?;
    let cfg = args.executor.config();
    register_tags(&mut tokenizer, &cfg, model.config.vocab_size);
    let engine_cfg = args.executor.kv.apply(EngineConfig::default(), &model)?;
    let mut engine = Engine::new(&model, Some(&tokenizer), engine_cfg)?;
    let questions: Vec<String> = items.iter().map(T::prompt).collect();
    let started = std::time::Instant::now();
    let outcomes = if args.one_at_a_time {
        let mut all = Vec::with_capacity(questions.len());
        for (i, q) in questions.iter().enumerate() {
            // A seed per question, so questions run alone do not all share one draw.
            let seed = args.executor.seed.wrapping_add(i as u64);
            all.extend(run_mode(
                &mut engine,
                &tokenizer,
                &cfg,
                mode,
                std::slice::from_ref(q),
                args.samples,
                seed,
            )?);
        }
        all
    } else {
        run_mode(
            &mut engine,
            &tokenizer,
            &cfg,
            mode,
            &questions,
            args.samples,
            args.executor.seed,
        )?
    };
    let seconds = started.elapsed().as_secs_f64();
    let verdicts: Vec<Verdict> = items
        .iter()
        .zip(&outcomes)
        .map(|(item, o)| match &o.answer {
            Some(a) => T::verify(item, a),
            None => Verdict::wrong("no final answer"),
        })
        .collect();
    let n = outcomes.len().max(1) as f64;
    let summary = EvalSummary {
        mode,
        questions: outcomes.len(),
        accuracy: verdicts.iter().filter(|v| v.is_correct()).count() as f64 / n,
        format_valid_rate: outcomes.iter().filter(|o| o.format_ok).count() as f64 / n,
        mean_critical_path_tokens: outcomes
            .iter()
            .map(|o| o.critical_path_tokens as f64)
            .sum::<f64>()
            / n,
        mean_concurrency: outcomes.iter().map(|o| o.concurrency).sum::<f64>() / n,
        mean_total_tokens: outcomes.iter().map(|o| o.total_tokens as f64).sum::<f64>() / n,
        seconds,
    };
    Ok((summary, outcomes, verdicts))
}

impl EvalArgs {
    /// Every flag, before the tasks are read or a model loads.
    fn validate(&self) -> Result<()> {
        use super::validate::*;
        self.model.validate()?;
        self.graphs.validate()?;
        self.executor.validate()?;
        // 0 samples used to run as 1.
        at_least("--samples", self.samples, 1)?;
        at_least_opt("--limit", self.limit, 1)
    }
}

/// An empty task file (or one of blank lines) is an error, exit status 1: a summary of zero
/// questions is never what was meant.
pub fn run(args: EvalArgs) -> Result<()> {
    args.validate()?;
    args.model.init_threads()?;
    // Before the work, not after it: a bad path must not cost a whole evaluation.
    if let Some(p) = &args.out {
        prepare_output(p)?;
    }
    if let Some(dir) = &args.svg_dir {
        prepare_output_dir(dir)?;
    }
    let (summary, outcomes, verdicts) = match args.task {
        TaskName::Countdown => evaluate::<Countdown>(&args, args.mode)?,
        TaskName::MultiCountdown => evaluate::<MultiCountdown>(&args, args.mode)?,
        TaskName::Arithmetic => evaluate::<Arithmetic>(&args, args.mode)?,
        TaskName::Products => evaluate::<Products>(&args, args.mode)?,
        TaskName::Sudoku => evaluate::<Sudoku>(&args, args.mode)?,
        TaskName::Math => {
            return Err(Error::InvalidInput(
                "math items need a dataset; use `data check` for answers".into(),
            ));
        }
    };
    println!(
        "{:?}: {} questions, accuracy {:.3}, format-valid {:.3}, critical path {:.1} tokens, thinking concurrency η {:.2} (mean active agents), {:.1} tokens/question, {:.1} s",
        summary.mode,
        summary.questions,
        summary.accuracy,
        summary.format_valid_rate,
        summary.mean_critical_path_tokens,
        summary.mean_concurrency,
        summary.mean_total_tokens,
        summary.seconds
    );
    if let Some(p) = &args.out {
        let mut text = String::new();
        for (o, v) in outcomes.iter().zip(&verdicts) {
            text.push_str(&serde_json::to_string(
                &json!({ "correct": v.is_correct(), "outcome": o }),
            )?);
            text.push('\n');
        }
        write_atomic(p, text.as_bytes())?;
    }
    if let Some(dir) = &args.svg_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let episodes: Vec<_> = outcomes
            .iter()
            .flat_map(|o| o.episodes.iter().cloned())
            .collect();
        write_atomic(
            &dir.join("forks.svg"),
            forks_histogram_svg(&episodes).as_bytes(),
        )?;
        if let Some(first) = episodes.first() {
            write_atomic(&dir.join("timeline.svg"), timeline_svg(first).as_bytes())?;
        }
    }
    Ok(())
}
