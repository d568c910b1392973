//! Turning logits into the next token: repetition penalty, then temperature, top-k,
//! top-p and min-p (the order transformers applies them), then a seeded draw.
//! Temperature 0 is greedy.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 selects greedy decoding.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1 disables.
    pub top_p: f32,
    /// 0 disables: drops tokens below min_p × the top token's probability.
    pub min_p: f32,
    /// 1 disables; > 1 discourages tokens already in the prompt or output.
    pub repetition_penalty: f32,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Generation stops once the output text contains one of these; it is cut before it.
    pub stop: Vec<String>,
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
            max_new_tokens: 64,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Next token from one row of logits; `history` is prompt + output so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        if let Some(i) = logits.iter().position(|x| x.is_nan()) {
            return Err(Error::InvalidInput(format!(
                "logits contain NaN (first at token {i})"
            )));
        }
        let p = &self.params;
        let mut logits = logits.to_vec();
        if p.repetition_penalty != 1.0 {
            apply_repetition_penalty(&mut logits, history, p.repetition_penalty);
        }
        if p.is_greedy() {
            return Ok(argmax(&logits));
        }
        let draw: f32 = self.rng.random();
        Ok(sample_from(&logits, p, draw))
    }
}

/// log softmax(logits)[token], in f64 internally so it rounds once.
pub fn log_prob(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    (logits[token as usize] as f64 - max - sum.ln()) as f32
}

/// First index of the maximum, as torch.argmax breaks ties.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    let mut seen = std::collections::HashSet::new();
    for &t in history {
        let t = t as usize;
        if t < logits.len() && seen.insert(t) {
            let l = &mut logits[t];
            *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
        }
    }
}

/// The draw of step `step` of a seeded run as the GPU sampler makes it
/// (kernels/sampling.cu): the splitmix64 finaliser of (seed, step), top 24 bits / 2^24.
pub fn counter_uniform(seed: u64, step: u64) -> f32 {
    let mut z = seed.wrapping_add(step.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// Temperature, top-k, top-p and min-p, then the token `draw` (uniform in [0, 1)) selects:
/// the reference the GPU sampler is tested against.
pub fn sample_with_draw(logits: &[f32], p: &SamplingParams, draw: f32) -> u32 {
    sample_from(logits, p, draw)
}

/// Filters then draws with `draw` uniform in [0, 1).
fn sample_from(logits: &[f32], p: &SamplingParams, draw: f32) -> u32 {
    let inv_t = 1.0 / p.temperature;
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l * inv_t))
        .collect();
    let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if p.top_k > 0 && p.top_k < cand.len() {
        cand.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
        cand.truncate(p.top_k);
    }
    cand.sort_unstable_by(by_logit_desc);

    let max = cand[0].1;
    let mut probs: Vec<f32> = cand.iter().map(|&(_, l)| (l - max).exp()).collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= total);

    let mut keep = probs.len();
    if p.top_p < 1.0 {
        // Smallest prefix whose mass reaches top_p (at least one token).
        let mut cum = 0.0;
        for (i, &pr) in probs.iter().enumerate() {
            cum += pr;
            if cum >= p.top_p {
                keep = keep.min(i + 1);
                break;
            }
        }
    }
    if p.min_p > 0.0 {
        let floor = p.min_p * probs[0];
        keep = keep.min(probs.iter().take_while(|&&pr| pr >= floor).count().max(1));
    }
    let kept = &probs[..keep];
    let mass: f32 = kept.iter().sum();
    let mut target = draw * mass;
    for (i, &pr) in kept.iter().enumerate() {
        if target < pr {
            return cand[i].0;
        }
        target -= pr;
    }
    cand[keep - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            ..Default::default()
        }
    }

    #[test]
    fn counter_uniform_is_in_range_and_varies() {
        let draws: Vec<f32> = (0..1000).map(|s| counter_uniform(7, s)).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let mean = draws.iter().sum::<f32>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "mean {mean}");
        assert_ne!(counter_uniform(7, 0), counter_uniform(8, 0));
    }

    #[test]
    fn greedy_takes_first_max() {
        let mut s = Sampler::new(params(0.0)).unwrap();
        assert_eq!(s.sample(&[1.0, 3.0, 3.0, -1.0], &[]).unwrap(), 1);
    }

    #[test]
    fn seed_makes_runs_repeatable() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                ..params(1.0)
            })
            .unwrap();
            (0..20)
                .map(|_| s.sample(&logits, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.5, 2.0, 1.9, -3.0];
        let p = SamplingParams {
            top_k: 1,
            ..params(1.0)
        };
        for d in [0.0, 0.5, 0.999] {
            assert_eq!(sample_from(&logits, &p, d), 1);
        }
        let p = SamplingParams {
            top_p: 0.01,
            ..params(1.0)
        };
        assert_eq!(sample_from(&logits, &p, 0.99), 1);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // probs ∝ e^0, e^-1, e^-10: min_p 0.2 keeps the first two only.
        let logits = [0.0, -1.0, -10.0];
        let p = SamplingParams {
            min_p: 0.2,
            ..params(1.0)
        };
        assert_eq!(sample_from(&logits, &p, 0.9999), 1);
    }

    #[test]
    fn repetition_penalty_follows_transformers_sign_rule() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn bad_params_and_nan_are_errors() {
        assert!(
            Sampler::new(SamplingParams {
                top_p: 0.0,
                ..params(1.0)
            })
            .is_err()
        );
        assert!(Sampler::new(params(-1.0)).is_err());
        let mut s = Sampler::new(params(0.0)).unwrap();
        assert!(
            matches!(s.sample(&[0.0, f32::NAN], &[]), Err(Error::InvalidInput(m)) if m.contains("NaN"))
        );
    }
}
