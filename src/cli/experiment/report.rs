//! The experiment's figures per method: accuracy with a Wilson 95% interval, critical path
//! (mean with a normal 95% interval, p50, p90), wall-clock latency, tokens, η and format
//! validity, and the markdown table built from them.

use serde::Serialize;
use serde_json::{Value, json};

use crate::asyncthink::executor::{QuestionOutcome, ThinkingMode};
use crate::cli::eval::EvalSummary;
use crate::tasks::Verdict;

/// Which checkpoint a row measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Format SFT on random structures.
    Sft,
    /// SFT, then GRPO with the full reward.
    Grpo,
    /// SFT, then GRPO with λ = 0 (ablation).
    GrpoLambda0,
    /// Format SFT on one fixed structure (ablation).
    SftFixed,
}

impl Stage {
    pub fn label(self) -> &'static str {
        match self {
            Stage::Sft => "SFT",
            Stage::Grpo => "SFT + GRPO",
            Stage::GrpoLambda0 => "SFT + GRPO, λ = 0",
            Stage::SftFixed => "SFT on one fixed structure",
        }
    }
}

/// Mean with its normal-approximation 95% half-width, and two percentiles.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub ci95: f64,
    pub p50: f64,
    pub p90: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let n = values.len();
        if n == 0 {
            return Spread {
                mean: 0.0,
                ci95: 0.0,
                p50: 0.0,
                p90: 0.0,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Spread {
            mean,
            ci95: 1.96 * (var / n as f64).sqrt(),
            p50: percentile(&sorted, 0.5),
            p90: percentile(&sorted, 0.9),
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Wilson score interval (95%) for `k` successes in `n`.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.96f64);
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

pub struct Row {
    pub stage: Stage,
    pub mode: ThinkingMode,
    pub capacity: usize,
    pub samples: usize,
    pub questions: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub accuracy_ci: (f64, f64),
    pub format_valid: f64,
    pub critical_path: Spread,
    pub wall_seconds: Spread,
    pub total_tokens: Spread,
    pub concurrency: f64,
    pub forks: f64,
    pub seconds: f64,
    pub outcomes: Vec<QuestionOutcome>,
    pub verdicts: Vec<Verdict>,
}

impl Row {
    pub fn new(
        stage: Stage,
        mode: ThinkingMode,
        capacity: usize,
        samples: usize,
        summary: &EvalSummary,
        outcomes: Vec<QuestionOutcome>,
        verdicts: &[Verdict],
    ) -> Row {
        let n = outcomes.len();
        let correct = verdicts.iter().filter(|v| v.is_correct()).count();
        let of = |f: &dyn Fn(&QuestionOutcome) -> f64| {
            Spread::of(&outcomes.iter().map(f).collect::<Vec<_>>())
        };
        Row {
            stage,
            mode,
            capacity,
            samples,
            questions: n,
            correct,
            accuracy: correct as f64 / n.max(1) as f64,
            accuracy_ci: wilson(correct, n),
            format_valid: summary.format_valid_rate,
            critical_path: of(&|o| o.critical_path_tokens as f64),
            wall_seconds: of(&|o| o.wall_seconds),
            total_tokens: of(&|o| o.total_tokens as f64),
            concurrency: summary.mean_concurrency,
            forks: outcomes
                .iter()
                .map(|o| o.episodes.iter().map(|e| e.forks).sum::<usize>() as f64)
                .sum::<f64>()
                / n.max(1) as f64,
            seconds: summary.seconds,
            verdicts: verdicts.to_vec(),
            outcomes,
        }
    }

    pub fn method(&self) -> String {
        match self.mode {
            ThinkingMode::Asyncthink => format!("AsyncThink, c = {}", self.capacity),
            ThinkingMode::Sequential => "sequential".into(),
            ThinkingMode::Parallel => format!("parallel, {} samples", self.samples),
        }
    }

    pub fn one_line(&self) -> String {
        format!(
            "{} | {}: accuracy {:.3} [{:.3}, {:.3}], critical path {:.1} ± {:.1} tokens, η {:.2}, format-valid {:.3} ({:.0} s)",
            self.stage.label(),
            self.method(),
            self.accuracy,
            self.accuracy_ci.0,
            self.accuracy_ci.1,
            self.critical_path.mean,
            self.critical_path.ci95,
            self.concurrency,
            self.format_valid,
            self.seconds
        )
    }

    pub fn summary_json(&self) -> Value {
        json!({
            "stage": self.stage, "mode": self.mode, "method": self.method(),
            "capacity": self.capacity, "samples": self.samples,
            "questions": self.questions, "correct": self.correct,
            "accuracy": self.accuracy, "accuracy_ci95": [self.accuracy_ci.0, self.accuracy_ci.1],
            "format_valid": self.format_valid,
            "critical_path_tokens": self.critical_path,
            "wall_seconds": self.wall_seconds,
            "total_tokens": self.total_tokens,
            "concurrency": self.concurrency,
            "forks_per_question": self.forks,
            "seconds": self.seconds,
            "per_question": self.outcomes.iter().zip(&self.verdicts).map(|(o, v)| json!({
                "correct": v.is_correct(), "critical_path": o.critical_path_tokens,
                "total_tokens": o.total_tokens, "format_ok": o.format_ok,
            })).collect::<Vec<_>>(),
        })
    }
}

/// A method's questions run one at a time: seconds and critical path per question.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub method: String,
    pub questions: usize,
    pub wall_seconds: Spread,
    pub critical_path: Spread,
    /// Wall-clock milliseconds per critical-path token.
    pub ms_per_token: f64,
}

impl Latency {
    pub fn of(row: &Row) -> Latency {
        Latency {
            method: row.method(),
            questions: row.questions,
            wall_seconds: row.wall_seconds,
            critical_path: row.critical_path,
            ms_per_token: 1e3 * row.wall_seconds.mean / row.critical_path.mean.max(1.0),
        }
    }
}

/// The latency rows with each one's ratios to the first (AsyncThink).
pub fn latency_table(rows: &[Latency]) -> String {
    let mut t = String::from(
        "| method (alone on the engine) | questions | wall s / question | critical path | ms / critical-path token | wall-clock ratio | critical-path ratio |\n|---|---|---|---|---|---|---|\n",
    );
    let Some(first) = rows.first() else {
        return t;
    };
    for r in rows {
        t.push_str(&format!(
            "| {} | {} | {:.3} | {:.1} | {:.2} | {:.2} | {:.2} |\n",
            r.method,
            r.questions,
            r.wall_seconds.mean,
            r.critical_path.mean,
            r.ms_per_token,
            r.wall_seconds.mean / first.wall_seconds.mean.max(1e-12),
            r.critical_path.mean / first.critical_path.mean.max(1e-12),
        ));
    }
    t
}

pub fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| model | method | accuracy [95% CI] | critical path: mean ± 95% | p50 | p90 | wall s / question | tokens / question | η | forks | format-valid |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        t.push_str(&format!(
            "| {} | {} | {:.3} [{:.3}, {:.3}] | {:.1} ± {:.1} | {:.0} | {:.0} | {:.3} | {:.1} | {:.2} | {:.2} | {:.3} |\n",
            r.stage.label(),
            r.method(),
            r.accuracy,
            r.accuracy_ci.0,
            r.accuracy_ci.1,
            r.critical_path.mean,
            r.critical_path.ci95,
            r.critical_path.p50,
            r.critical_path.p90,
            r.wall_seconds.mean,
            r.total_tokens.mean,
            r.concurrency,
            r.forks,
            r.format_valid,
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_known_values() {
        // 50 of 100: 0.404 .. 0.596 (the textbook value).
        let (lo, hi) = wilson(50, 100);
        assert!(
            (lo - 0.4038).abs() < 1e-3 && (hi - 0.5962).abs() < 1e-3,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(0, 10);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.2775).abs() < 1e-3, "{hi}");
        assert_eq!(wilson(0, 0), (0.0, 0.0));
    }

    #[test]
    fn spread_percentiles_and_interval() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        let s = Spread::of(&v);
        assert_eq!(s.mean, 5.5);
        assert_eq!(s.p50, 5.0);
        assert_eq!(s.p90, 9.0);
        // sd = 3.0277, 1.96 * sd / sqrt(10) = 1.8766.
        assert!((s.ci95 - 1.8766).abs() < 1e-3, "{}", s.ci95);
        assert_eq!(Spread::of(&[]).mean, 0.0);
    }
}
