//! Rewards of the AsyncThink paper as pure functions of a finished episode:
//!
//! * accuracy `R_A = min(n_correct_unique, n_required) / n_required` (binary when one answer
//!   is required);
//! * format error `R_FE`, a negative constant, replaces everything else when the protocol
//!   parser reported any error;
//! * thinking concurrency `R_η = min(η / c, τ) / τ`;
//! * total `R = R_FE` on a format error, else `R_A + λ · R_η`.

use serde::{Deserialize, Serialize};

use crate::asyncthink::episode::EpisodeRecord;
use crate::tasks::Verdict;

/// The paper does not publish its constants; these defaults and their reasons are in
/// docs/tasks.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RewardConfig {
    /// R_FE: below the worst well-formed episode (R ≥ 0), so breaking the protocol never
    /// pays.
    pub format_error: f64,
    /// λ: at most 0.25 for perfect concurrency, so no amount of forking makes a wrong
    /// answer (≤ 0.25) beat a right one (≥ 1).
    pub lambda: f64,
    /// τ: concurrency ratio η/c at which R_η saturates; above it extra (trivial) forks earn
    /// nothing.
    pub tau: f64,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            format_error: -1.0,
            lambda: 0.25,
            tau: 0.5,
        }
    }
}

impl RewardConfig {
    /// Names the first bad setting and its rule (NaN fails every rule).
    pub fn validate(&self) -> crate::Result<()> {
        let checks = [
            (
                "tau",
                self.tau,
                self.tau > 0.0 && self.tau <= 1.0,
                "must be in (0, 1]",
            ),
            (
                "lambda",
                self.lambda,
                self.lambda.is_finite() && self.lambda >= 0.0,
                "must be finite and >= 0",
            ),
            (
                "format_error",
                self.format_error,
                self.format_error.is_finite(),
                "must be finite",
            ),
        ];
        match checks.iter().find(|c| !c.2) {
            Some((name, v, _, rule)) => Err(crate::Error::InvalidInput(format!(
                "reward setting {name} {v}: {rule}"
            ))),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    pub accuracy: f64,
    pub concurrency: f64,
    pub format_error: bool,
    pub total: f64,
}

pub fn accuracy_reward(v: &Verdict) -> f64 {
    if v.n_required == 0 {
        return 0.0;
    }
    v.n_correct.min(v.n_required) as f64 / v.n_required as f64
}

/// `min(η/c, τ)/τ`; 0 for a degenerate capacity, τ or η (NaN, negative).
pub fn concurrency_reward(eta: f64, capacity: usize, tau: f64) -> f64 {
    if capacity == 0 || tau.is_nan() || tau <= 0.0 || !eta.is_finite() || eta <= 0.0 {
        return 0.0;
    }
    (eta / capacity as f64).min(tau) / tau
}

pub fn reward(ep: &EpisodeRecord, verdict: &Verdict, cfg: &RewardConfig) -> Reward {
    let accuracy = accuracy_reward(verdict);
    let concurrency = concurrency_reward(ep.concurrency, ep.capacity, cfg.tau);
    let format_error = ep.has_format_error();
    let total = if format_error {
        cfg.format_error
    } else {
        accuracy + cfg.lambda * concurrency
    };
    Reward {
        accuracy,
        concurrency,
        format_error,
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asyncthink::protocol::ProtocolError;

    fn episode(eta: f64, capacity: usize) -> EpisodeRecord {
        EpisodeRecord {
            organizer_text: "<ANSWER>1</ANSWER>".into(),
            final_answer: Some("1".into()),
            workers: vec![],
            format_errors: vec![],
            concurrency: eta,
            capacity,
            wall_clock_steps: 10,
        }
    }

    fn verdict(n_correct: usize, n_required: usize) -> Verdict {
        Verdict {
            n_correct,
            n_required,
            detail: None,
        }
    }

    #[test]
    fn accuracy_is_binary_or_fractional() {
        assert_eq!(accuracy_reward(&verdict(1, 1)), 1.0);
        assert_eq!(accuracy_reward(&verdict(0, 1)), 0.0);
        assert_eq!(accuracy_reward(&verdict(3, 4)), 0.75);
        assert_eq!(accuracy_reward(&verdict(9, 4)), 1.0);
        assert_eq!(accuracy_reward(&verdict(0, 0)), 0.0);
    }

    #[test]
    fn concurrency_saturates_at_tau() {
        let tau = 0.5;
        // η/c exactly τ: full reward; just below: less; above: no more.
        assert_eq!(concurrency_reward(2.0, 4, tau), 1.0);
        assert!(concurrency_reward(1.99, 4, tau) < 1.0);
        assert_eq!(concurrency_reward(3.5, 4, tau), 1.0);
        assert_eq!(concurrency_reward(1.0, 4, tau), 0.5);
        assert_eq!(concurrency_reward(1.0, 0, tau), 0.0);
        assert_eq!(concurrency_reward(f64::NAN, 4, tau), 0.0);
        assert_eq!(concurrency_reward(2.0, 4, 0.0), 0.0);
    }

    #[test]
    fn total_reward() {
        let cfg = RewardConfig::default();
        let r = reward(&episode(2.0, 4), &verdict(1, 1), &cfg);
        assert_eq!(r.total, 1.25);
        let r = reward(&episode(1.0, 4), &verdict(0, 1), &cfg);
        assert_eq!(r.total, 0.125);
        // A wrong answer with perfect concurrency stays below a right sequential one.
        let wrong_parallel = reward(&episode(4.0, 4), &verdict(0, 1), &cfg).total;
        let right_sequential = reward(&episode(1.0, 4), &verdict(1, 1), &cfg).total;
        assert!(wrong_parallel < right_sequential);
        let mut bad = episode(3.0, 4);
        bad.format_errors.push(ProtocolError::MissingAnswer);
        let r = reward(&bad, &verdict(1, 1), &cfg);
        assert!(r.format_error);
        assert_eq!(r.total, -1.0);
        let mut no_answer = episode(3.0, 4);
        no_answer.final_answer = None;
        assert_eq!(reward(&no_answer, &verdict(1, 1), &cfg).total, -1.0);
    }

    #[test]
    fn config_validation() {
        assert!(RewardConfig::default().validate().is_ok());
        let bad = RewardConfig {
            tau: 0.0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
