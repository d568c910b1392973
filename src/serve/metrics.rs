//! What /metrics reports, in Prometheus' text format: the engine's queues and KV blocks
//! (set by the engine loop after every step), token counters, latency histograms, and
//! request outcomes (counted where each request ends).

use std::collections::BTreeMap;
use std::fmt::Write;

/// Bucket upper bounds in seconds, as vLLM's latency histograms use.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];

#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last slot counts values above every bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len() + 1];
        }
        let i = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// How a request ended, as counted in `asyncthink_requests_total{outcome=…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Every choice ended by eos, a stop string or its length limit.
    Completed,
    /// The client went away; its sequences were aborted.
    Disconnected,
    /// The queue was full (503).
    Rejected,
    /// A 4xx: malformed, unauthorized, unknown model.
    Invalid,
    /// Aborted by shutdown after the grace period.
    ShutdownAborted,
    /// The engine failed mid-request (500).
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Disconnected => "disconnected",
            Outcome::Rejected => "rejected",
            Outcome::Invalid => "invalid",
            Outcome::ShutdownAborted => "shutdown_aborted",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub running_seqs: usize,
    pub waiting_seqs: usize,
    pub live_requests: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    pub prefix_cache_hit_rate: f64,
    pub preemptions: u64,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub engine_steps: u64,
    pub ttft: Histogram,
    pub itl: Histogram,
    /// Between consecutive streamed deltas of one AsyncThink episode's organizer text.
    pub episode_itl: Histogram,
    outcomes: BTreeMap<Outcome, u64>,
}

impl Metrics {
    pub fn count(&mut self, outcome: Outcome) {
        *self.outcomes.entry(outcome).or_default() += 1;
    }

    pub fn outcome(&self, outcome: Outcome) -> u64 {
        self.outcomes.get(&outcome).copied().unwrap_or(0)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP asyncthink_{name} {help}\n# TYPE asyncthink_{name} {kind}\nasyncthink_{name} {value}"
            );
        };
        gauge(
            "running_sequences",
            "Sequences scheduled in the engine.",
            "gauge",
            self.running_seqs.to_string(),
        );
        gauge(
            "waiting_sequences",
            "Sequences queued for admission.",
            "gauge",
            self.waiting_seqs.to_string(),
        );
        gauge(
            "live_requests",
            "Requests accepted and not yet answered.",
            "gauge",
            self.live_requests.to_string(),
        );
        gauge(
            "kv_blocks_total",
            "KV cache blocks.",
            "gauge",
            self.kv_blocks_total.to_string(),
        );
        gauge(
            "kv_blocks_used",
            "KV cache blocks held by sequences.",
            "gauge",
            (self.kv_blocks_total - self.kv_blocks_free.min(self.kv_blocks_total)).to_string(),
        );
        gauge(
            "kv_blocks_free",
            "KV cache blocks free (cached prefixes included).",
            "gauge",
            self.kv_blocks_free.to_string(),
        );
        gauge(
            "prefix_cache_hit_rate",
            "Prompt tokens served from the prefix cache / prompt tokens.",
            "gauge",
            self.prefix_cache_hit_rate.to_string(),
        );
        gauge(
            "preemptions_total",
            "Sequences preempted for KV blocks.",
            "counter",
            self.preemptions.to_string(),
        );
        gauge(
            "prompt_tokens_total",
            "Prompt tokens admitted.",
            "counter",
            self.prompt_tokens.to_string(),
        );
        gauge(
            "generated_tokens_total",
            "Tokens sampled.",
            "counter",
            self.generated_tokens.to_string(),
        );
        gauge(
            "engine_steps_total",
            "Engine steps run.",
            "counter",
            self.engine_steps.to_string(),
        );
        self.ttft.render(
            &mut out,
            "asyncthink_time_to_first_token_seconds",
            "From a request's arrival at the engine loop to its first token.",
        );
        self.itl.render(
            &mut out,
            "asyncthink_inter_token_latency_seconds",
            "Between consecutive tokens of one sequence.",
        );
        self.episode_itl.render(
            &mut out,
            "asyncthink_episode_inter_token_latency_seconds",
            "Between consecutive streamed deltas of one AsyncThink episode's organizer text, a JOIN's wait for its worker included.",
        );
        let _ = writeln!(
            out,
            "# HELP asyncthink_requests_total Requests by how they ended.\n# TYPE asyncthink_requests_total counter"
        );
        for o in [
            Outcome::Completed,
            Outcome::Disconnected,
            Outcome::Rejected,
            Outcome::Invalid,
            Outcome::ShutdownAborted,
            Outcome::Failed,
        ] {
            let _ = writeln!(
                out,
                "asyncthink_requests_total{{outcome=\"{}\"}} {}",
                o.label(),
                self.outcome(o)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut m = Metrics::default();
        m.ttft.observe(0.003);
        m.ttft.observe(0.5);
        m.ttft.observe(1000.0);
        m.count(Outcome::Completed);
        let text = m.render();
        assert!(text.contains("asyncthink_time_to_first_token_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("asyncthink_time_to_first_token_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("asyncthink_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("asyncthink_requests_total{outcome=\"completed\"} 1"));
    }
}
