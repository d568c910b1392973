//! One GRPO update over a batch of rollouts: recompute the sampled tokens' log-probs
//! under the current parameters, turn the clipped objective into per-token weights, and
//! run the weighted cross-entropy backward once. Tokens the model did not generate
//! (prompts, text the executor inserted) carry weight 0.

use serde::Serialize;

use super::batch::TrainBatch;
use super::grad::{Gradients, loss_and_grad, target_log_probs};
use super::grpo::{GrpoConfig, GrpoStats, SeqTokens, token_weights};
use super::optim::AdamW;
use crate::backend::TrainBackend;
use crate::model::Qwen3;
use crate::{Error, Result};

/// One sequence of an episode as the trainer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSeq {
    /// The whole context: prompt, generated and inserted tokens in order.
    pub ids: Vec<u32>,
    /// Positions (indices into `ids`) the model sampled.
    pub generated: Vec<usize>,
    /// The sampler's log-prob of each generated token, same order.
    pub old_logprobs: Vec<f32>,
    /// The episode (unit) this sequence belongs to: all of a unit's sequences share its advantage.
    pub unit: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UpdateStats {
    pub objective: GrpoStats,
    /// Largest |sampler log-prob − trainer log-prob| over generated tokens, before the update.
    pub logprob_gap_max: f64,
    pub logprob_gap_mean: f64,
    pub grad_norm: f64,
    pub lr: f32,
}

fn pack(seqs: &[RolloutSeq]) -> Result<TrainBatch> {
    let packed: Vec<(Vec<u32>, Vec<f32>)> = seqs
        .iter()
        .map(|s| {
            if s.generated.len() != s.old_logprobs.len()
                || s.generated.iter().any(|&p| p == 0 || p >= s.ids.len())
            {
                return Err(Error::InvalidInput(
                    "rollout positions and log-probs disagree".into(),
                ));
            }
            Ok((s.ids.clone(), vec![0.0; s.ids.len() - 1]))
        })
        .collect::<Result<_>>()?;
    TrainBatch::pack(&packed)
}

/// `updates` optimizer steps on one rollout batch (the first is on-policy; later ones
/// reuse the rollouts, which is what the ratio clipping is for).
pub fn grpo_update<B: TrainBackend>(
    model: &mut Qwen3<B>,
    optimizer: &mut AdamW<B>,
    seqs: &[RolloutSeq],
    advantages: &[f64],
    reference: Option<&Qwen3<B>>,
    cfg: &GrpoConfig,
    updates: usize,
) -> Result<UpdateStats> {
    if seqs.iter().any(|s| s.unit >= advantages.len()) {
        return Err(Error::InvalidInput(
            "a rollout sequence names an episode without an advantage".into(),
        ));
    }
    let mut batch = pack(seqs)?;
    // Row of generated position p in the packed batch: the row predicting it, p - 1.
    let rows: Vec<Vec<usize>> = seqs
        .iter()
        .zip(batch.bounds.iter())
        .map(|(s, &start)| s.generated.iter().map(|&p| start + p - 1).collect())
        .collect();
    let gather = |lp: &[f32]| -> Vec<Vec<f32>> {
        rows.iter()
            .map(|r| r.iter().map(|&i| lp[i]).collect())
            .collect()
    };
    let reference_lp = match reference {
        Some(r) if cfg.kl_coef > 0.0 => Some(gather(&target_log_probs(r, &batch)?)),
        _ => None,
    };
    let mut stats = UpdateStats::default();
    let mut grads = Gradients::zeros(model)?;
    for update in 0..updates.max(1) {
        let new_lp = gather(&target_log_probs(model, &batch)?);
        if update == 0 {
            let gaps: Vec<f64> = seqs
                .iter()
                .zip(&new_lp)
                .flat_map(|(s, n)| {
                    s.old_logprobs
                        .iter()
                        .zip(n)
                        .map(|(a, b)| (*a as f64 - *b as f64).abs())
                })
                .collect();
            // NaN must show, not vanish into `f64::max`.
            stats.logprob_gap_max = gaps
                .iter()
                .copied()
                .fold(0.0, |m, g| if g.is_nan() || g > m { g } else { m });
            stats.logprob_gap_mean = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
        }
        let views: Vec<SeqTokens<'_>> = seqs
            .iter()
            .enumerate()
            .map(|(i, s)| SeqTokens {
                old: &s.old_logprobs,
                new: &new_lp[i],
                reference: reference_lp.as_ref().map(|r| r[i].as_slice()),
                advantage: advantages[s.unit],
            })
            .collect();
        let (weights, objective) = token_weights(&views, cfg)?;
        batch.weights.iter_mut().for_each(|w| *w = 0.0);
        for (r, w) in rows.iter().zip(&weights) {
            for (&row, &wt) in r.iter().zip(w) {
                batch.weights[row] = wt;
            }
        }
        grads.zero(&model.backend)?;
        // Weights already carry the aggregation's normalization.
        loss_and_grad(model, &batch, 1.0, &mut grads, false)?;
        let step = optimizer.step(model, &grads, 1)?;
        if update == 0 {
            stats.objective = objective;
            stats.grad_norm = step.grad_norm;
            stats.lr = step.lr;
        }
    }
    Ok(stats)
}
