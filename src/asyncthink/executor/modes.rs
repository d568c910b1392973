//! AsyncThink and its two baselines on the same engine, with the same metrics:
//! sequential thinking (one organizer, no workers) and parallel thinking (N independent
//! sequential samples of the whole question, answer by majority vote).

use std::collections::HashMap;

use serde::Serialize;

use super::config::ExecutorConfig;
use super::episode::EpisodeOutcome;
use super::run::run_episodes;
use crate::Result;
use crate::backend::Backend;
use crate::engine::Engine;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ThinkingMode {
    Asyncthink,
    Sequential,
    Parallel,
}

/// One question's result in any mode.
#[derive(Debug, Clone, Serialize)]
pub struct QuestionOutcome {
    pub answer: Option<String>,
    /// Longest dependency chain in generated tokens (parallel: the longest sample).
    pub critical_path_tokens: usize,
    /// Mean agents decoding at once (parallel: samples run side by side).
    pub concurrency: f64,
    pub total_tokens: usize,
    /// No format error in any of its episodes.
    pub format_ok: bool,
    pub wall_seconds: f64,
    pub episodes: Vec<EpisodeOutcome>,
}

/// Runs every question in `mode`; `parallel_samples` is N for parallel thinking.
pub fn run_mode<B: Backend>(
    engine: &mut Engine<'_, B>,
    tokenizer: &Tokenizer,
    cfg: &ExecutorConfig,
    mode: ThinkingMode,
    questions: &[String],
    parallel_samples: usize,
    seed: u64,
) -> Result<Vec<QuestionOutcome>> {
    let single = |o: EpisodeOutcome| QuestionOutcome {
        answer: o.record.final_answer.clone(),
        critical_path_tokens: o.critical_path_tokens,
        concurrency: o.record.concurrency,
        total_tokens: o.total_tokens,
        format_ok: !o.record.has_format_error(),
        wall_seconds: o.wall_seconds,
        episodes: vec![o],
    };
    match mode {
        ThinkingMode::Asyncthink => {
            Ok(run_episodes(engine, tokenizer, cfg, questions, None, seed)?
                .into_iter()
                .map(single)
                .collect())
        }
        ThinkingMode::Sequential => {
            let seq_cfg = sequential_config(cfg);
            Ok(
                run_episodes(engine, tokenizer, &seq_cfg, questions, None, seed)?
                    .into_iter()
                    .map(single)
                    .collect(),
            )
        }
        ThinkingMode::Parallel => {
            let n = parallel_samples.max(1);
            let seq_cfg = sequential_config(cfg);
            let repeated: Vec<String> = questions
                .iter()
                .flat_map(|q| std::iter::repeat_n(q.clone(), n))
                .collect();
            let outs = run_episodes(engine, tokenizer, &seq_cfg, &repeated, None, seed)?;
            Ok(outs.chunks(n).map(|group| vote(group.to_vec())).collect())
        }
    }
}

/// The organizer alone: the pool holds no workers.
fn sequential_config(cfg: &ExecutorConfig) -> ExecutorConfig {
    let mut c = ExecutorConfig::new(1);
    c.organizer = cfg.organizer.clone();
    c.worker = cfg.worker.clone();
    c.max_steps = cfg.max_steps;
    c.tags = cfg.tags.clone();
    c
}

/// Majority vote over the samples' answers (ties: the first answer seen).
fn vote(samples: Vec<EpisodeOutcome>) -> QuestionOutcome {
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    for (i, s) in samples.iter().enumerate() {
        if let Some(a) = &s.record.final_answer {
            let e = counts.entry(a.trim().to_string()).or_insert((0, i));
            e.0 += 1;
        }
    }
    let answer = counts
        .into_iter()
        .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
        .map(|(a, _)| a);
    QuestionOutcome {
        answer,
        critical_path_tokens: samples
            .iter()
            .map(|s| s.critical_path_tokens)
            .max()
            .unwrap_or(0),
        // Samples decode side by side: agent-steps over the longest chain.
        concurrency: samples.iter().map(|s| s.total_tokens).sum::<usize>() as f64
            / samples
                .iter()
                .map(|s| s.critical_path_tokens)
                .max()
                .unwrap_or(1)
                .max(1) as f64,
        total_tokens: samples.iter().map(|s| s.total_tokens).sum(),
        format_ok: samples.iter().all(|s| !s.record.has_format_error()),
        wall_seconds: samples.iter().map(|s| s.wall_seconds).fold(0.0, f64::max),
        episodes: samples,
    }
}
