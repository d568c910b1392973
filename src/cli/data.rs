//! `asyncthink data …`: generate task items, synthesize cold-start traces, check answers.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::validate::at_least;
use crate::asyncthink::protocol::ProtocolTags;
use crate::asyncthink::traces::{Plannable, TraceMode, synthesize_each};
use crate::tasks::arithmetic::Arithmetic;
use crate::tasks::countdown::Countdown;
use crate::tasks::math_answer::{self, MathItem};
use crate::tasks::multi_countdown::MultiCountdown;
use crate::tasks::products::Products;
use crate::tasks::sudoku::Sudoku;
use crate::tasks::{Task, Verdict, extract_final_answer, for_each_chunk};
use crate::train::reward::accuracy_reward;
use crate::util::AtomicFile;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaskName {
    Countdown,
    MultiCountdown,
    Arithmetic,
    /// Several products worked by repeated addition (the AsyncThink experiment's task).
    Products,
    Sudoku,
    /// Competition math answers (check only; items come from a dataset).
    Math,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Asyncthink,
    Sequential,
    Parallel,
    /// AsyncThink traces in one fixed structure (fork while there is room, join oldest
    /// first): the paper's ablation.
    AsyncthinkFixed,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Generate task items as JSONL.
    Gen(GenArgs),
    /// Synthesize cold-start chat traces (organizer and worker lines) as JSONL.
    Traces(TracesArgs),
    /// Verify a JSONL of answers (item fields plus "answer") and print the accuracy.
    Check(CheckArgs),
}

/// How large the arithmetic items are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Size {
    /// The demo's: sums of 3–4 numbers up to 9, products of 3 numbers up to 4 (what the
    /// embedded tiny model and the demo's checkpoints can learn).
    Tiny,
    /// Longer sums and products of larger numbers (for real checkpoints).
    Standard,
}

impl Size {
    fn arithmetic(self) -> Arithmetic {
        match self {
            Size::Tiny => Arithmetic::tiny(),
            Size::Standard => Arithmetic::default(),
        }
    }
}

#[derive(Debug, Args)]
pub struct GenArgs {
    #[arg(long, value_enum)]
    pub task: TaskName,
    /// Item size for --task arithmetic.
    #[arg(long, value_enum, default_value_t = Size::Standard)]
    pub size: Size,
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct TracesArgs {
    #[arg(long, value_enum)]
    pub task: TaskName,
    /// Item size for --task arithmetic.
    #[arg(long, value_enum, default_value_t = Size::Standard)]
    pub size: Size,
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = ModeArg::Asyncthink)]
    pub mode: ModeArg,
    /// Agents in the pool, organizer included.
    #[arg(long, default_value_t = 4)]
    pub capacity: usize,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[arg(long, value_enum)]
    pub task: TaskName,
    #[arg(long)]
    pub input: PathBuf,
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Gen(a) => gen_cmd(&a),
        DataCommand::Traces(a) => traces_cmd(&a),
        DataCommand::Check(a) => check_cmd(&a),
    }
}

fn gen_cmd(a: &GenArgs) -> Result<()> {
    at_least("--n", a.n, 1)?;
    // Streamed a chunk at a time: memory stays flat however large --n is, and the file
    // appears whole at the end or not at all.
    fn go<T: Task>(t: &T, a: &GenArgs) -> Result<()> {
        let mut out = AtomicFile::create(&a.out)?;
        for_each_chunk(t, a.n as u64, a.seed, |_, items| {
            items.iter().try_for_each(|item| out.write_json_line(item))
        })?;
        out.commit()?;
        eprintln!("wrote {} {} items to {}", a.n, T::NAME, a.out.display());
        Ok(())
    }
    match a.task {
        TaskName::Countdown => go(&Countdown::default(), a),
        TaskName::MultiCountdown => go(&MultiCountdown::default(), a),
        TaskName::Arithmetic => go(&a.size.arithmetic(), a),
        TaskName::Products => go(&Products::default(), a),
        TaskName::Sudoku => go(&Sudoku::default(), a),
        TaskName::Math => Err(Error::InvalidInput(
            "math has no generator: it checks answers to dataset problems".into(),
        )),
    }
}

fn traces_cmd(a: &TracesArgs) -> Result<()> {
    let mode = match a.mode {
        ModeArg::Asyncthink => TraceMode::AsyncThink,
        ModeArg::Sequential => TraceMode::Sequential,
        ModeArg::Parallel => TraceMode::Parallel,
        ModeArg::AsyncthinkFixed => TraceMode::AsyncThinkFixed,
    };
    at_least("--n", a.n, 1)?;
    at_least("--capacity", a.capacity, 1)?;
    if mode != TraceMode::Sequential && a.capacity < 2 {
        return Err(Error::InvalidInput(
            "forking modes need --capacity >= 2 (the organizer plus a worker)".into(),
        ));
    }
    fn go<T: Plannable>(t: &T, a: &TracesArgs, mode: TraceMode) -> Result<()> {
        let mut out = AtomicFile::create(&a.out)?;
        let tags = ProtocolTags::default();
        let stats = synthesize_each(t, a.n, a.seed, mode, a.capacity, &tags, |convs| {
            convs.iter().try_for_each(|c| out.write_json_line(c))
        })?;
        out.commit()?;
        eprintln!(
            "{} traces, {:?}, capacity {}:\n{stats}",
            T::NAME,
            a.mode,
            a.capacity
        );
        Ok(())
    }
    match a.task {
        TaskName::Countdown => go(&Countdown::default(), a, mode),
        TaskName::MultiCountdown => go(&MultiCountdown::default(), a, mode),
        TaskName::Arithmetic => go(&a.size.arithmetic(), a, mode),
        TaskName::Products => go(&Products::default(), a, mode),
        TaskName::Sudoku => go(&Sudoku::default(), a, mode),
        TaskName::Math => Err(Error::InvalidInput(
            "math has no decomposition plan for traces".into(),
        )),
    }
}

/// One line of a check file: the item's own fields plus the model's answer (bare, or a
/// full reply with `<ANSWER>…</ANSWER>`).
#[derive(Deserialize)]
struct Answered<I> {
    #[serde(flatten)]
    item: I,
    answer: String,
}

fn check_cmd(a: &CheckArgs) -> Result<()> {
    fn go<I: DeserializeOwned>(path: &Path, judge: impl Fn(&I, &str) -> Verdict) -> Result<()> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let tags = ProtocolTags::default();
        let (mut n, mut correct, mut ra_sum) = (0usize, 0usize, 0.0f64);
        for (k, line) in BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| Error::io(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let row: Answered<I> = serde_json::from_str(&line)
                .map_err(|e| Error::InvalidInput(format!("{}:{}: {e}", path.display(), k + 1)))?;
            let ans = extract_final_answer(&row.answer, &tags.answer_open, &tags.answer_close);
            let v = judge(&row.item, &ans);
            n += 1;
            correct += usize::from(v.is_correct());
            ra_sum += accuracy_reward(&v);
        }
        let acc = if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        };
        let ra = if n == 0 { 0.0 } else { ra_sum / n as f64 };
        println!("accuracy {acc:.4} ({correct}/{n}), mean R_A {ra:.4}");
        Ok(())
    }
    match a.task {
        TaskName::Countdown => go(&a.input, Countdown::verify),
        TaskName::MultiCountdown => go(&a.input, MultiCountdown::verify),
        TaskName::Arithmetic => go(&a.input, Arithmetic::verify),
        TaskName::Products => go(&a.input, Products::verify),
        TaskName::Sudoku => go(&a.input, Sudoku::verify),
        TaskName::Math => go::<MathItem>(&a.input, math_answer::verify),
    }
}
