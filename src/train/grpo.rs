//! The GRPO objective: group-relative advantages and the clipped policy-ratio loss
//! (separate low/high ε as in DAPO), with the aggregation modes of TRL and verl and an
//! optional k3 KL penalty to a frozen reference.
//!
//! The gradient of this loss with respect to each sampled token's log-probability is a
//! per-token scalar, and d(−log p)/dlogits is exactly what the weighted cross-entropy
//! kernel already computes. So a GRPO update is one `loss_and_grad` call whose token
//! weights are those scalars: no second loss kernel.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregation {
    /// Σ over every token of the batch / number of tokens (DAPO, verl's default).
    TokenMean,
    /// Mean over sequences of each sequence's token mean (the original GRPO).
    SequenceMean,
    /// Σ over every token / a constant (Dr. GRPO: no length bias).
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RewardScale {
    /// (r − group mean) / group std.
    Group,
    /// (r − group mean) / std over the whole batch.
    Batch,
    /// r − group mean (Dr. GRPO).
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpoConfig {
    pub clip_low: f32,
    pub clip_high: f32,
    /// β of the k3 KL penalty (0: no reference model needed).
    pub kl_coef: f32,
    pub aggregation: Aggregation,
    /// The divisor for `Aggregation::Constant` (e.g. the generation budget).
    pub constant_normalizer: f32,
    pub reward_scale: RewardScale,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            clip_low: 0.2,
            clip_high: 0.28,
            kl_coef: 0.0,
            aggregation: Aggregation::TokenMean,
            constant_normalizer: 1024.0,
            reward_scale: RewardScale::Group,
        }
    }
}

impl GrpoConfig {
    /// Names the first bad setting: the loss clamps the ratio to [1 − clip_low, 1 + clip_high],
    /// which panics on NaN or crossed bounds, so they are checked before any rollout.
    pub fn validate(&self) -> Result<()> {
        let non_negative = |x: f32| x.is_finite() && x >= 0.0;
        let checks = [
            (
                "clip_low",
                self.clip_low,
                (0.0..1.0).contains(&self.clip_low),
                "must be in [0, 1)",
            ),
            (
                "clip_high",
                self.clip_high,
                non_negative(self.clip_high),
                "must be finite and >= 0",
            ),
            (
                "kl_coef",
                self.kl_coef,
                non_negative(self.kl_coef),
                "must be finite and >= 0",
            ),
            (
                "constant_normalizer",
                self.constant_normalizer,
                // Only the constant aggregation divides by it.
                self.aggregation != Aggregation::Constant
                    || (self.constant_normalizer.is_finite() && self.constant_normalizer > 0.0),
                "must be finite and > 0 with constant aggregation",
            ),
        ];
        match checks.iter().find(|c| !c.2) {
            Some((name, v, _, rule)) => Err(Error::InvalidInput(format!(
                "GRPO setting {name} {v}: {rule}"
            ))),
            None => Ok(()),
        }
    }
}

/// Group-relative advantages: `rewards` holds consecutive groups of `group_size`.
pub fn advantages(rewards: &[f64], group_size: usize, scale: RewardScale) -> Result<Vec<f64>> {
    if group_size == 0 || !rewards.len().is_multiple_of(group_size) {
        return Err(Error::InvalidInput(format!(
            "{} rewards do not split into groups of {group_size}",
            rewards.len()
        )));
    }
    let std = |xs: &[f64]| {
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
    };
    let batch_std = std(rewards);
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(group_size) {
        let mean = group.iter().sum::<f64>() / group.len() as f64;
        let denom = match scale {
            RewardScale::Group => std(group),
            RewardScale::Batch => batch_std,
            RewardScale::None => 1.0,
        };
        // A group whose rewards are all equal carries no signal: advantage 0, not NaN.
        out.extend(group.iter().map(|r| {
            if denom > 1e-8 {
                (r - mean) / denom
            } else if scale == RewardScale::None {
                r - mean
            } else {
                0.0
            }
        }));
    }
    Ok(out)
}

/// One trained sequence's tokens (only those the model generated).
pub struct SeqTokens<'a> {
    /// Log-probabilities of the sampled tokens under the sampling policy.
    pub old: &'a [f32],
    /// The same under the current parameters.
    pub new: &'a [f32],
    /// Under the reference model (needed when kl_coef > 0).
    pub reference: Option<&'a [f32]>,
    pub advantage: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GrpoStats {
    /// The objective's loss value (to minimize).
    pub loss: f64,
    pub clip_fraction: f64,
    /// Mean k3 estimate of KL(π ‖ π_ref) over tokens (0 without a reference).
    pub kl: f64,
    pub tokens: usize,
}

/// Per-token weights w such that Σ w·(−log p_new) has this objective's gradient, plus
/// the objective's value. Per token: J = min(r·A, clip(r, 1−ε_low, 1+ε_high)·A) − β·k3,
/// r = exp(new − old), k3 = exp(ref − new) − (ref − new) − 1; loss = −Σ c·J with c the
/// aggregation's coefficient. dloss/dnew = c·(−A·r·[unclipped] + β·(1 − exp(ref − new))),
/// and since d(−log p)/d log p = −1, w = −dloss/dnew.
pub fn token_weights(
    seqs: &[SeqTokens<'_>],
    cfg: &GrpoConfig,
) -> Result<(Vec<Vec<f32>>, GrpoStats)> {
    let total: usize = seqs.iter().map(|s| s.new.len()).sum();
    let mut stats = GrpoStats {
        tokens: total,
        ..Default::default()
    };
    let mut clipped = 0usize;
    let mut weights = Vec::with_capacity(seqs.len());
    for s in seqs {
        if s.old.len() != s.new.len() || s.reference.is_some_and(|r| r.len() != s.new.len()) {
            return Err(Error::InvalidInput(
                "log-prob lists of one sequence differ in length".into(),
            ));
        }
        if cfg.kl_coef > 0.0 && s.reference.is_none() {
            return Err(Error::InvalidInput(
                "kl_coef > 0 needs reference log-probs".into(),
            ));
        }
        let coef = match cfg.aggregation {
            Aggregation::TokenMean => 1.0 / total.max(1) as f64,
            Aggregation::SequenceMean => 1.0 / (seqs.len() as f64 * s.new.len().max(1) as f64),
            Aggregation::Constant => 1.0 / cfg.constant_normalizer as f64,
        };
        let a = s.advantage;
        let mut w = Vec::with_capacity(s.new.len());
        for t in 0..s.new.len() {
            let (new, old) = (s.new[t] as f64, s.old[t] as f64);
            let r = (new - old).exp();
            let r_clip = r.clamp(1.0 - cfg.clip_low as f64, 1.0 + cfg.clip_high as f64);
            let (unclipped, clipped_term) = (r * a, r_clip * a);
            let is_clipped = clipped_term < unclipped;
            clipped += usize::from(is_clipped);
            let mut j = unclipped.min(clipped_term);
            let mut dloss = if is_clipped { 0.0 } else { -a * r };
            if let (Some(reference), true) = (s.reference, cfg.kl_coef > 0.0) {
                let d = reference[t] as f64 - new;
                let k3 = d.exp() - d - 1.0;
                j -= cfg.kl_coef as f64 * k3;
                dloss += cfg.kl_coef as f64 * (1.0 - d.exp());
                stats.kl += k3 / total.max(1) as f64;
            }
            stats.loss -= coef * j;
            w.push((-coef * dloss) as f32);
        }
        weights.push(w);
    }
    stats.clip_fraction = clipped as f64 / total.max(1) as f64;
    Ok((weights, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_by_scale() {
        let r = [1.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5];
        let g = advantages(&r, 4, RewardScale::Group).unwrap();
        let std = (3.0f64 / 16.0).sqrt();
        assert!((g[0] - 0.25 / std).abs() < 1e-12 && (g[1] + 0.75 / std).abs() < 1e-12);
        assert_eq!(&g[4..], &[0.0; 4], "a flat group has no signal");
        let n = advantages(&r, 4, RewardScale::None).unwrap();
        assert_eq!(n[1], -0.75);
        assert!(advantages(&r, 3, RewardScale::None).is_err());
    }

    /// Hand-computed: A = 1, ε = (0.2, 0.28), ratios e^0.1 (inside), e^0.5 (clipped high),
    /// e^−0.5 (below 1−ε but A > 0: the min keeps the unclipped term).
    #[test]
    fn clipped_objective_by_hand() {
        let old = [0.0f32, 0.0, 0.0];
        let new = [0.1f32, 0.5, -0.5];
        let cfg = GrpoConfig::default();
        let seq = SeqTokens {
            old: &old,
            new: &new,
            reference: None,
            advantage: 1.0,
        };
        let (w, st) = token_weights(&[seq], &cfg).unwrap();
        let (r0, r2) = (0.1f64.exp(), (-0.5f64).exp());
        assert!((w[0][0] as f64 - r0 / 3.0).abs() < 1e-6);
        assert_eq!(w[0][1], 0.0, "clipped above 1+ε_high: no gradient");
        assert!((w[0][2] as f64 - r2 / 3.0).abs() < 1e-6);
        assert!((st.clip_fraction - 1.0 / 3.0).abs() < 1e-12);
        assert!((st.loss + (r0 + 1.28 + r2) / 3.0).abs() < 1e-6);
        // Negative advantage: clipped below 1−ε_low instead.
        let seq = SeqTokens {
            old: &old,
            new: &new,
            reference: None,
            advantage: -1.0,
        };
        let (w, _) = token_weights(&[seq], &cfg).unwrap();
        assert_eq!(w[0][2], 0.0, "A < 0 and r < 1−ε_low: clipped");
        assert!((w[0][1] as f64 + 0.5f64.exp() / 3.0).abs() < 1e-6);
    }

    #[test]
    fn weights_are_minus_the_loss_gradient_with_kl_and_each_aggregation() {
        let old = [0.0f32, -0.3, 0.2, 0.05];
        let reference = [-0.1f32, 0.0, 0.3, 0.0];
        let new_a = [0.05f32, -0.2, 0.1];
        let new_b = [0.02f32];
        for aggregation in [
            Aggregation::TokenMean,
            Aggregation::SequenceMean,
            Aggregation::Constant,
        ] {
            let cfg = GrpoConfig {
                kl_coef: 0.1,
                aggregation,
                constant_normalizer: 7.0,
                ..Default::default()
            };
            let loss = |a: &[f32], b: &[f32]| {
                let s = [
                    SeqTokens {
                        old: &old[..3],
                        new: a,
                        reference: Some(&reference[..3]),
                        advantage: 0.7,
                    },
                    SeqTokens {
                        old: &old[3..],
                        new: b,
                        reference: Some(&reference[3..]),
                        advantage: -1.2,
                    },
                ];
                token_weights(&s, &cfg).unwrap().1.loss
            };
            let s = [
                SeqTokens {
                    old: &old[..3],
                    new: &new_a,
                    reference: Some(&reference[..3]),
                    advantage: 0.7,
                },
                SeqTokens {
                    old: &old[3..],
                    new: &new_b,
                    reference: Some(&reference[3..]),
                    advantage: -1.2,
                },
            ];
            let (w, _) = token_weights(&s, &cfg).unwrap();
            let h = 1e-3f32;
            for t in 0..3 {
                let (mut p, mut m) = (new_a, new_a);
                p[t] += h;
                m[t] -= h;
                let d = (loss(&p, &new_b) - loss(&m, &new_b)) / (2.0 * h as f64);
                assert!(
                    (w[0][t] as f64 + d).abs() < 1e-4,
                    "{aggregation:?} token {t}: {} vs {}",
                    w[0][t],
                    -d
                );
            }
        }
    }
}
