//! Turning logits into the next token: repetition penalty, then temperature, top-k,
//! top-p and min-p (the order transformers applies them), then a seeded draw.
//! Temperature 0 is greedy.
//!
//! The draw of a sequence's n-th token (n = tokens generated so far) is
//! `counter_uniform(seed, n)`: a hash of (seed, n), not the state of an RNG, so the host
//! rules here and the device sampler (kernels/sampling.cu) pick the same token from the
//! same logits, and a preempted or re-batched sequence draws what it would have anyway.
//! `select_on_host` is the whole per-step selection (`Backend::select_tokens`' default).

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
    /// How many top alternatives (token, log-prob) to record per generated token, at most
    /// `MAX_TOP_LOGPROBS`; 0 records none. They come from the same distribution as the
    /// chosen token's log-prob (see `Chosen`).
    pub top_logprobs: usize,
}

/// The most alternatives a token may ask for: OpenAI's and vLLM's cap on `top_logprobs`.
pub const MAX_TOP_LOGPROBS: usize = 20;

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
            top_logprobs: 0,
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
        // As vLLM and the OpenAI API: a request always asks for at least one token.
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1, got 0".into());
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return bad(format!(
                "top_logprobs must be in 0..={MAX_TOP_LOGPROBS}, got {}",
                self.top_logprobs
            ));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// One sequence's sampler: its settings and a draw counter (the number of tokens it has
/// sampled). Stateless apart from the counter: `sample_at` with the same step gives the same
/// token.
pub struct Sampler {
    params: SamplingParams,
    step: u64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Sampler { params, step: 0 })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Next token from one row of logits; `history` is prompt + output so far. The n-th call
    /// draws `counter_uniform(seed, n)`.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        let t = self.sample_at(logits, history, self.step)?;
        self.step += 1;
        Ok(t)
    }

    /// The token of draw number `step` (does not move the counter).
    pub fn sample_at(&self, logits: &[f32], history: &[u32], step: u64) -> Result<u32> {
        if let Some(i) = first_nan(logits) {
            return Err(Error::InvalidInput(format!(
                "logits contain NaN (first at token {i})"
            )));
        }
        Ok(pick(logits, &self.params, history, step))
    }
}

fn first_nan(logits: &[f32]) -> Option<usize> {
    logits.iter().position(|x| x.is_nan())
}

/// Penalty, then greedy or the filtered draw `counter_uniform(seed, step)` (no NaN check).
fn pick(logits: &[f32], p: &SamplingParams, history: &[u32], step: u64) -> u32 {
    let penalized;
    let logits = if p.repetition_penalty != 1.0 {
        let mut l = logits.to_vec();
        apply_repetition_penalty(&mut l, history, p.repetition_penalty);
        penalized = l;
        &penalized[..]
    } else {
        logits
    };
    if p.is_greedy() {
        return argmax(logits);
    }
    sample_from(logits, p, counter_uniform(p.seed, step))
}

/// What `Backend::select_tokens` decides for one row of final logits.
#[derive(Debug, Clone, Copy)]
pub struct TokenChoice<'a> {
    pub params: &'a SamplingParams,
    /// The draw counter: tokens this sequence has generated so far.
    pub step: u64,
    /// Prompt + output so far (the repetition penalty's token set).
    pub history: &'a [u32],
    /// A token to emit instead of sampling (it still gets its log-prob).
    pub forced: Option<u32>,
}

/// The token picked for a row and log softmax(raw logits)[token] (temperature 1, before
/// penalty and filtering).
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    pub token: u32,
    pub logprob: f32,
    /// The row's `params.top_logprobs` most likely tokens under that same raw distribution
    /// (what vLLM returns by default: the model's log-probs, not the sampler's filtered
    /// ones), by log-prob descending, ties by lower id. Empty when none were asked for.
    pub top: Vec<(u32, f32)>,
}

/// A row of raw logits holding a NaN or an infinity: no token can be chosen from it, and the
/// sequence it belongs to ends with an error while the batch's other rows go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonFinite {
    /// The first vocabulary index whose logit is not finite.
    pub token: usize,
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "logits are not finite (NaN or Inf, first at vocabulary index {}): the checkpoint \
             or this input drives the model out of range",
            self.token
        )
    }
}

/// What selection made of one row: a token, or the reason there is none.
pub type RowChoice = std::result::Result<Chosen, NonFinite>;

/// Checks `rows` against a `[rows.len(), vocab]` logits shape: valid settings, forced tokens
/// inside the vocabulary. Shared by the host and device selection.
pub fn check_choices(rows: &[TokenChoice<'_>], num_rows: usize, vocab: usize) -> Result<()> {
    if rows.len() != num_rows {
        return Err(Error::InvalidInput(format!(
            "select_tokens: {} choices for {num_rows} rows of logits",
            rows.len()
        )));
    }
    if vocab == 0 && num_rows > 0 {
        return Err(Error::InvalidInput(
            "select_tokens: logits have no columns".into(),
        ));
    }
    for (r, c) in rows.iter().enumerate() {
        c.params.validate()?;
        if let Some(t) = c.forced.filter(|&t| t as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "row {r}: forced token {t} is outside the vocabulary (size {vocab})"
            )));
        }
    }
    Ok(())
}

/// The reference selection: `logits` is `[rows.len(), vocab]` row-major f32. Per row: a NaN or
/// an infinity makes that row `NonFinite` (the others are unaffected), otherwise the forced
/// token or `Sampler`'s rules at draw `step`, and the log-prob of the raw logits at the
/// chosen token.
pub fn select_on_host(logits: &[f32], rows: &[TokenChoice<'_>]) -> Result<Vec<RowChoice>> {
    if rows.is_empty() {
        return if logits.is_empty() {
            Ok(Vec::new())
        } else {
            Err(Error::InvalidInput(format!(
                "select_tokens: {} logits for no rows",
                logits.len()
            )))
        };
    }
    if !logits.len().is_multiple_of(rows.len()) {
        return Err(Error::InvalidInput(format!(
            "select_tokens: {} logits do not split into {} rows",
            logits.len(),
            rows.len()
        )));
    }
    let vocab = logits.len() / rows.len();
    check_choices(rows, rows.len(), vocab)?;
    rows.iter()
        .zip(logits.chunks(vocab))
        .map(|(c, row)| {
            if let Some(token) = row.iter().position(|x| !x.is_finite()) {
                return Ok(Err(NonFinite { token }));
            }
            let token = match c.forced {
                Some(t) => t,
                None => pick(row, c.params, c.history, c.step),
            };
            Ok(Ok(Chosen {
                token,
                logprob: log_prob(row, token),
                top: top_log_probs(row, c.params.top_logprobs),
            }))
        })
        .collect()
}

/// Each row's distinct history tokens inside the vocabulary, in first-seen order: the token
/// set the repetition penalty touches (once each).
pub fn penalty_tokens(history: &[u32], vocab: usize) -> Vec<u32> {
    let mut seen = std::collections::HashSet::new();
    history
        .iter()
        .copied()
        .filter(|&t| (t as usize) < vocab && seen.insert(t))
        .collect()
}

/// log softmax(logits)[token], in f64 internally so it rounds once.
pub fn log_prob(logits: &[f32], token: u32) -> f32 {
    (logits[token as usize] as f64 - log_sum_exp(logits)) as f32
}

/// log Σ exp(logits), in f64 (max-shifted).
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + sum.ln()
}

/// The `k` most likely tokens of log softmax(logits) with their log-probs, by log-prob
/// descending and ties by lower id. Each value is computed as `log_prob` computes it, so the
/// chosen token's entry equals its `Chosen::logprob` exactly.
pub fn top_log_probs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    // Ordering by logit is ordering by log-prob (a shift by the same normaliser).
    let by_logit_desc = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k < ids.len() {
        ids.select_nth_unstable_by(k - 1, by_logit_desc);
        ids.truncate(k);
    }
    ids.sort_unstable_by(by_logit_desc);
    let lse = log_sum_exp(logits);
    ids.into_iter()
        .map(|t| (t, (logits[t as usize] as f64 - lse) as f32))
        .collect()
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

/// transformers' rule on each distinct history token: negative logits × penalty, others ÷.
pub fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    for t in penalty_tokens(history, logits.len()) {
        let l = &mut logits[t as usize];
        *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
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
    // Each term in f32 (as the GPU computes its terms), every sum in f64. Summed in f32 one
    // after another, the ~1e5 nearly equal terms of a flat 151 936-token row drift by ~4e-4 of
    // the mass (the emulated GPU test caught a draw 13 ranks from the exact pick): a bias in
    // the distribution itself, not just in the last bits.
    let mut probs: Vec<f64> = cand.iter().map(|&(_, l)| (l - max).exp() as f64).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);

    let mut keep = probs.len();
    if p.top_p < 1.0 {
        // Smallest prefix whose mass reaches top_p (at least one token). The mass is compared
        // at top_p's own f32 precision: tied bf16 logits make masses like 16 × 1/20 that equal
        // top_p = 0.8 exactly, and in f64 they would fall just short of 0.8f's binary value.
        let mut cum = 0.0;
        for (i, &pr) in probs.iter().enumerate() {
            cum += pr;
            if cum as f32 >= p.top_p {
                keep = keep.min(i + 1);
                break;
            }
        }
    }
    if p.min_p > 0.0 {
        let floor = p.min_p as f64 * probs[0];
        keep = keep.min(probs.iter().take_while(|&&pr| pr >= floor).count().max(1));
    }
    let kept = &probs[..keep];
    let mass: f64 = kept.iter().sum();
    let mut target = draw as f64 * mass;
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
    fn a_flat_qwen3_sized_row_draws_the_exact_pick() {
        // 151 936 distinct logits in [-1, 1): each token holds ~7e-6 of the mass. The exact
        // pick for a draw, found in f64 from scratch, must be what the sampler returns (one
        // rank either way for f32 terms against f64 ones); the sampler that summed in f32 one
        // term after another picked 3 ranks away at draw 0.95.
        let n = 151_936u32;
        let logits: Vec<f32> = (0..n)
            .map(|i| {
                ((i.wrapping_mul(2_654_435_761) >> 8) as f32 / (1u32 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        let mut order: Vec<u32> = (0..n).collect();
        order.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        let max = logits[order[0] as usize];
        let w: Vec<f64> = order
            .iter()
            .map(|&i| f64::from(logits[i as usize] - max).exp())
            .collect();
        let total: f64 = w.iter().sum();
        let p = params(1.0);
        for draw in [0.05f32, 0.3, 0.5, 0.7, 0.95] {
            let mut target = f64::from(draw) * total;
            let exact = order
                .iter()
                .zip(&w)
                .find(|&(_, &wi)| {
                    let hit = target < wi;
                    target -= wi;
                    hit
                })
                .map(|(&i, _)| i)
                .unwrap();
            let got = sample_from(&logits, &p, draw);
            let rank = |t: u32| order.iter().position(|&i| i == t).unwrap() as i64;
            assert!(
                (rank(got) - rank(exact)).abs() <= 1,
                "draw {draw}: token {got} (rank {}) against the exact {exact} (rank {})",
                rank(got),
                rank(exact)
            );
        }
    }

    #[test]
    fn a_tied_prefix_whose_mass_equals_top_p_is_kept_alone() {
        // 20 equal logits: 16 of them hold 0.8 of the mass, which reaches top_p = 0.8, so the
        // 17th is out and the last draws land on the 16th (the GPU sampler's f32 mass agrees).
        let logits = [3.0; 20];
        let p = SamplingParams {
            top_p: 0.8,
            ..params(0.7)
        };
        assert_eq!(sample_from(&logits, &p, 0.999), 15);
        assert_eq!(sample_from(&logits, &p, 0.0), 0);
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

    fn choice(p: &SamplingParams, step: u64, forced: Option<u32>) -> TokenChoice<'_> {
        TokenChoice {
            params: p,
            step,
            history: &[],
            forced,
        }
    }

    #[test]
    fn draws_follow_the_counter_not_rng_state() {
        // Equal logits: the draw u picks index ~ floor(u · n), so the token reveals the draw.
        let n = 1000;
        let logits = vec![0.25f32; n];
        let p = SamplingParams {
            seed: 11,
            ..params(1.0)
        };
        let mut s = Sampler::new(p.clone()).unwrap();
        for step in 0..64u64 {
            let want = (counter_uniform(11, step) * n as f32) as i64;
            let seq = s.sample(&logits, &[]).unwrap();
            assert!(
                (seq as i64 - want).abs() <= 1,
                "step {step}: {seq} vs {want}"
            );
            // Out of order, and through the batch selection: the same token.
            assert_eq!(s.sample_at(&logits, &[], step).unwrap(), seq);
            let got = chosen(&logits, &[choice(&p, step, None)]).unwrap();
            assert_eq!(got[0].token, seq, "step {step}");
        }
    }

    #[test]
    fn select_matches_sample_with_draw_per_row() {
        let vocab = 37;
        let logits: Vec<f32> = (0..3 * vocab)
            .map(|i| (i as f32 * 0.71).sin() * 4.0)
            .collect();
        let ps = [
            SamplingParams {
                seed: 5,
                top_k: 7,
                ..params(0.8)
            },
            SamplingParams {
                seed: 6,
                top_p: 0.6,
                min_p: 0.05,
                ..params(1.3)
            },
            params(0.0),
        ];
        for step in 0..20 {
            let rows: Vec<_> = ps.iter().map(|p| choice(p, step, None)).collect();
            let got = chosen(&logits, &rows).unwrap();
            for (r, (p, row)) in ps.iter().zip(logits.chunks(vocab)).enumerate() {
                let want = if p.is_greedy() {
                    argmax(row)
                } else {
                    sample_with_draw(row, p, counter_uniform(p.seed, step))
                };
                assert_eq!(got[r].token, want, "row {r} step {step}");
                assert_eq!(got[r].logprob, log_prob(row, want));
            }
        }
    }

    #[test]
    fn forced_token_is_kept_with_its_raw_log_prob() {
        // p = (1/4, 3/4): greedy would pick 1; forcing 0 must give log(1/4).
        let logits = [0.0f32, 3f32.ln()];
        let p = params(0.0);
        let got = chosen(&logits, &[choice(&p, 0, Some(0))]).unwrap();
        assert_eq!(got[0].token, 0);
        assert!((got[0].logprob - 0.25f32.ln()).abs() < 1e-6, "{got:?}");
        let free = chosen(&logits, &[choice(&p, 0, None)]).unwrap();
        assert_eq!(free[0].token, 1);
        assert!((free[0].logprob - 0.75f32.ln()).abs() < 1e-6);
        let bad = chosen(&logits, &[choice(&p, 0, Some(2))]);
        assert!(matches!(bad, Err(Error::InvalidInput(m)) if m.contains("forced token 2")));
    }

    #[test]
    fn penalty_changes_the_pick_but_not_the_log_prob() {
        // 2.0 / 2 = 1.0 < 1.5: the penalty moves greedy from 0 to 1; a negative logit is
        // multiplied (−0.5 · 2 = −1) so it stays below. Log-probs read the raw logits.
        let logits = [2.0f32, 1.5, -0.5];
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..params(0.0)
        };
        let row = TokenChoice {
            params: &p,
            step: 0,
            history: &[0, 2, 0, 99],
            forced: None,
        };
        let got = chosen(&logits, &[row]).unwrap();
        assert_eq!(got[0].token, 1);
        assert_eq!(got[0].logprob, log_prob(&logits, 1));
        assert_eq!(penalty_tokens(&[0, 2, 0, 99, 2], 3), vec![0, 2]);
        // Without the history the penalty touches nothing.
        let plain = TokenChoice {
            history: &[],
            ..row
        };
        assert_eq!(chosen(&logits, &[plain]).unwrap()[0].token, 0);
    }

    #[test]
    fn a_non_finite_row_fails_alone_and_shapes_are_checked() {
        let mut logits = vec![0.5f32; 12];
        logits[7] = f32::NAN;
        logits[9] = f32::NEG_INFINITY;
        let p = params(1.0);
        let rows = [
            choice(&p, 0, None),
            choice(&p, 0, Some(1)),
            choice(&p, 0, None),
        ];
        let got = select_on_host(&logits, &rows).unwrap();
        assert!(got[0].is_ok(), "row 0 is clean: {got:?}");
        assert_eq!(got[1], Err(NonFinite { token: 3 }));
        assert_eq!(got[2], Err(NonFinite { token: 1 }));
        assert!(select_on_host(&logits[..11], &rows).is_err());
        assert!(select_on_host(&[], &[]).unwrap().is_empty());
    }

    /// Log-softmax of every token then a full sort (log-prob descending, id ascending): the
    /// plain reference `top_log_probs` is checked against.
    fn naive_top(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
        let mut all: Vec<(u32, f32)> = (0..logits.len() as u32)
            .map(|t| (t, log_prob(logits, t)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    #[test]
    fn top_log_probs_equal_a_naive_sort_of_random_logits() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for vocab in [1usize, 5, 64, 500] {
            let logits: Vec<f32> = (0..vocab).map(|_| rng.random_range(-8.0..8.0)).collect();
            for k in [0, 1, 3, 20] {
                let got = top_log_probs(&logits, k);
                assert_eq!(got, naive_top(&logits, k), "vocab {vocab} k {k}");
                assert_eq!(got.len(), k.min(vocab));
            }
        }
    }

    #[test]
    fn top_log_probs_break_ties_by_lower_id() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, 2.0, 3.0];
        let ids: Vec<u32> = top_log_probs(&logits, 4).iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 5, 2]);
    }

    #[test]
    fn selection_records_alternatives_holding_the_chosen_log_prob() {
        let vocab = 41;
        let logits: Vec<f32> = (0..vocab).map(|i| (i as f32 * 1.37).cos() * 5.0).collect();
        let p = SamplingParams {
            top_logprobs: 5,
            seed: 9,
            ..params(1.0)
        };
        for step in 0..16 {
            let got = chosen(&logits, &[choice(&p, step, None)]).unwrap();
            let c = &got[0];
            assert_eq!(c.top, naive_top(&logits, 5), "step {step}");
            // Alternatives are the raw distribution's: the chosen token, when among them,
            // carries exactly its own log-prob.
            if let Some(&(_, lp)) = c.top.iter().find(|t| t.0 == c.token) {
                assert_eq!(lp, c.logprob, "step {step}");
            }
            assert!(c.logprob <= c.top[0].1);
        }
        // Greedy picks the top alternative itself; none asked for gives none.
        let g = SamplingParams {
            top_logprobs: 2,
            ..params(0.0)
        };
        let got = chosen(&logits, &[choice(&g, 0, None)]).unwrap();
        assert_eq!((got[0].token, got[0].logprob), got[0].top[0]);
        let none = chosen(&logits, &[choice(&params(0.0), 0, None)]).unwrap();
        assert!(none[0].top.is_empty());
    }

    #[test]
    fn top_logprobs_over_the_cap_is_refused_by_name() {
        let p = SamplingParams {
            top_logprobs: MAX_TOP_LOGPROBS + 1,
            ..params(0.0)
        };
        assert!(matches!(p.validate(), Err(Error::InvalidInput(m)) if m.contains("top_logprobs")));
        let ok = SamplingParams {
            top_logprobs: MAX_TOP_LOGPROBS,
            ..params(0.0)
        };
        assert!(ok.validate().is_ok());
    }

    /// `select_on_host` on rows known to be finite.
    fn chosen(logits: &[f32], rows: &[TokenChoice<'_>]) -> Result<Vec<Chosen>> {
        let rows = select_on_host(logits, rows)?;
        Ok(rows.into_iter().map(|r| r.expect("finite row")).collect())
    }
}
