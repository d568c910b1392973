//! What one finished AsyncThink episode leaves behind: the record the executor writes and
//! the rewards (src/train/reward.rs) and GRPO read.

use serde::{Deserialize, Serialize};

use super::protocol::ProtocolError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: u32,
    pub query: String,
    /// The worker's full output (thinking and `<RETURN>…</RETURN>`).
    pub output: String,
    /// What was inserted at the join; `None` if the worker never returned.
    pub takeaways: Option<String>,
    /// Decoding steps (wall clock, in executor steps) during which it ran: `[start, end)`.
    pub start_step: usize,
    pub end_step: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeRecord {
    /// The organizer's trace including the executor-inserted join payloads.
    pub organizer_text: String,
    /// Text inside the final-answer tags, if the organizer produced them.
    pub final_answer: Option<String>,
    pub workers: Vec<WorkerRecord>,
    /// Every protocol error reported for the organizer or any worker.
    pub format_errors: Vec<ProtocolError>,
    /// η: agents active per wall-clock step, averaged over the episode's critical path.
    pub concurrency: f64,
    /// c: agents in the pool, organizer included.
    pub capacity: usize,
    /// Wall-clock decoding steps of the episode (the critical path length).
    pub wall_clock_steps: usize,
}

impl EpisodeRecord {
    pub fn has_format_error(&self) -> bool {
        !self.format_errors.is_empty() || self.final_answer.is_none()
    }
}

/// η as the paper defines it, on the episode's own timeline: every agent decodes one token
/// per step from its fork until it returns, so the agent-steps are the generated tokens of
/// all agents and the steps are the critical path. Counting engine steps instead made η
/// depend on the batch: with more agents than `max_num_seqs`, a forked worker waits for a
/// slot, its episode's wall-clock steps stretch and η fell (1.17 for episodes whose logical
/// η was about 1.5), which also blunted GRPO's concurrency reward.
pub fn logical_concurrency(total_tokens: usize, critical_path_tokens: usize) -> f64 {
    if critical_path_tokens == 0 {
        return 0.0;
    }
    total_tokens as f64 / critical_path_tokens as f64
}

/// η from per-step activity: `active[t]` agents decoded at wall-clock step `t`.
pub fn concurrency(active: &[usize]) -> f64 {
    if active.is_empty() {
        return 0.0;
    }
    active.iter().sum::<usize>() as f64 / active.len() as f64
}

/// Per-step activity from agent intervals `[start, end)` (organizer and workers alike),
/// over steps `0..max end`.
pub fn activity_from_intervals(intervals: &[(usize, usize)]) -> Vec<usize> {
    let len = intervals.iter().map(|&(_, e)| e).max().unwrap_or(0);
    let mut active = vec![0usize; len];
    for &(s, e) in intervals {
        for a in active.iter_mut().take(e).skip(s) {
            *a += 1;
        }
    }
    active
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_eta_is_tokens_over_the_critical_path() {
        // One agent: every token is on the critical path.
        assert_eq!(logical_concurrency(40, 40), 1.0);
        // Organizer 30 tokens, two workers of 20 forked at 5 and 10, joined at once when
        // they return: critical path max(30, 10 + 20) = 30, 70 agent-tokens.
        assert!((logical_concurrency(70, 30) - 7.0 / 3.0).abs() < 1e-12);
        assert_eq!(logical_concurrency(0, 0), 0.0);
    }

    #[test]
    fn eta_is_mean_activity() {
        assert_eq!(concurrency(&[]), 0.0);
        assert_eq!(concurrency(&[1, 1, 1, 1]), 1.0);
        // Organizer 0..10, two workers 2..6 and 3..7: 10 + 4 + 4 = 18 agent-steps in 10.
        let act = activity_from_intervals(&[(0, 10), (2, 6), (3, 7)]);
        assert_eq!(act.len(), 10);
        assert!((concurrency(&act) - 1.8).abs() < 1e-12);
    }
}
