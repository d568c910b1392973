//! Device token selection (`CudaBackend::select_tokens`: repetition penalty, forced tokens,
//! greedy, seeded temperature/top-k/top-p/min-p, log-probs, NaN flags) against the host
//! reference (`engine::sampling::select_on_host`, the CPU backend's default) on the same bf16
//! logits, mixed settings in one batch, several vocabulary sizes.
//!
//! Forced and greedy rows must match exactly. A sampled row must pick the host's token up to
//! rounding: the host sums probabilities in f64 over the sorted candidates, the device f32
//! partial sums in block-wide trees, so on a flat 151 936-token distribution (each token
//! ~1e-5 of the mass) the cumulative masses differ by a fraction of one token's probability
//! and a draw landing that close to a boundary may take the neighbour. (When the host summed
//! in f32, its own drift reached 4e-4 there: the emulator caught it.) The test accepts the
//! device token if it lies, in the host's candidate order, between the host's earliest and
//! latest picks for the draws u ± 1e-4 (DRAW_TOL) and top_p ± 1e-5 (TOP_P_TOL: a tied prefix
//! can hold exactly top_p). A wrong draw, seed, step, order, filter or penalty lands
//! elsewhere (the draw alone is uniform over [0, 1)).
//!
//! Without a GPU (or driver, NVRTC, CUDA headers) each test prints "skipped: <reason>" and
//! returns. No GPU has run these yet (docs/gpu-runs.md).
//!
//! Built where no CUDA driver is installed, the GPU tests are marked ignored, so `cargo test`
//! counts them as ignored, not passed; `cargo test -- --include-ignored` runs them (each then
//! prints `skipped`, or fails under ASYNCTHINK_REQUIRE_GPU=1, when no GPU can be opened).
#![cfg(feature = "cuda")]

mod common;

use asyncthink::backend::cuda::CudaBackend;
use asyncthink::backend::{Backend, Chosen, NonFinite, RowChoice, TokenChoice};
use asyncthink::engine::SamplingParams;
use asyncthink::engine::sampling::{
    apply_repetition_penalty, argmax, counter_uniform, log_prob, sample_with_draw, select_on_host,
};
use asyncthink::model::{ForwardBatch, Logits, Qwen3};
use common::gpu::{gpu, rand_bf16};

/// Log-probs: the device sums f32 `expf` terms (≤ 2 ulp each) in f64 and takes the log in
/// f64; the host does everything in f64. That differs by ~1e-6 at these magnitudes; 1e-4 (plus
/// 1e-5 relative) keeps margin, while the log-prob of a wrong token or a wrong row's
/// normaliser is off by at least a bf16 logit step (≥ 1/32 here).
const LOGPROB_TOL: f32 = 1e-4;

/// Half-width, in draw space (mass fractions), of the window a sampled token may come from;
/// see the module doc. The device's f32 partial sums over ~1e5 terms drift by ~1e-6.
const DRAW_TOL: f32 = 1e-4;

/// Half-width of the window around top_p. Tied bf16 logits make exact prefix masses (16 of
/// 20 equal tokens hold 0.8): whether such a prefix "reaches" top_p = 0.8 turns on the last
/// bit of each side's sum, and the kept set, so the pick for one draw, moves by a token.
const TOP_P_TOL: f32 = 1e-5;

fn params(temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        ..Default::default()
    }
}

/// Ten rows of mixed settings: greedy, plain, top-k/top-p/min-p, penalty (> 1 and < 1, with
/// greedy and sampling), forced; seeds differ per row.
fn mixed_params() -> Vec<SamplingParams> {
    vec![
        params(0.0),
        SamplingParams {
            seed: 1,
            ..params(1.0)
        },
        SamplingParams {
            top_k: 20,
            top_p: 0.8,
            seed: 3,
            ..params(0.7)
        },
        SamplingParams {
            top_p: 0.5,
            min_p: 0.05,
            seed: 9,
            ..params(1.3)
        },
        SamplingParams {
            top_k: 1,
            seed: 4,
            ..params(0.9)
        },
        SamplingParams {
            repetition_penalty: 1.3,
            ..params(0.0)
        },
        SamplingParams {
            repetition_penalty: 1.8,
            top_k: 50,
            seed: 5,
            ..params(1.0)
        },
        // Forced below: its settings (penalty included) must not matter.
        SamplingParams {
            repetition_penalty: 2.0,
            seed: 6,
            ..params(1.0)
        },
        SamplingParams {
            min_p: 0.2,
            seed: 7,
            ..params(2.0)
        },
        SamplingParams {
            repetition_penalty: 0.7,
            top_p: 0.95,
            seed: 8,
            ..params(0.6)
        },
    ]
}

/// Per row: a history holding the row's top tokens (so a penalty changes the pick), repeats,
/// and ids outside the vocabulary (ignored by the penalty).
fn histories(logits: &[f32], vocab: usize, rows: usize) -> Vec<Vec<u32>> {
    (0..rows)
        .map(|r| {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let mut idx: Vec<u32> = (0..vocab as u32).collect();
            idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            let mut h: Vec<u32> = idx.iter().take(6).copied().collect();
            h.extend([idx[0], idx[1], vocab as u32 + 3, (r * 13 % vocab) as u32]);
            h
        })
        .collect()
}

/// Checks the device's choices against the host rules (see the module doc); returns how many
/// rows picked exactly the host's token.
fn check_rows(what: &str, logits: &[f32], rows: &[TokenChoice], got: &[Chosen]) -> usize {
    assert_eq!(got.len(), rows.len(), "{what}: rows");
    let want = finite(select_on_host(logits, rows).unwrap());
    let vocab = logits.len() / rows.len();
    let mut exact = 0;
    for (r, ((c, g), w)) in rows.iter().zip(got).zip(&want).enumerate() {
        let raw = &logits[r * vocab..(r + 1) * vocab];
        let d = g.token;
        assert!(
            (d as usize) < vocab,
            "{what}: row {r}: token {d} outside the vocabulary"
        );
        // The log-prob of whatever token the device chose, from the raw logits.
        let lp = log_prob(raw, d);
        assert!(
            (g.logprob - lp).abs() <= LOGPROB_TOL + 1e-5 * lp.abs(),
            "{what}: row {r}: log-prob {} vs host {lp} (token {d})",
            g.logprob
        );
        exact += usize::from(d == w.token);
        let p = c.params;
        let mut pen = raw.to_vec();
        if p.repetition_penalty != 1.0 {
            apply_repetition_penalty(&mut pen, c.history, p.repetition_penalty);
        }
        if let Some(f) = c.forced {
            assert_eq!(d, f, "{what}: row {r}: forced token");
        } else if p.is_greedy() {
            assert_eq!(d, argmax(&pen), "{what}: row {r}: greedy");
        } else {
            let u = counter_uniform(p.seed, c.step);
            // The host's candidate order: scaled logit descending, then index ascending.
            let inv_t = 1.0 / p.temperature;
            let key = |t: u32| pen[t as usize] * inv_t;
            // a comes no later than b (engine::sampling's candidate comparator).
            let before = |a: u32, b: u32| key(b).total_cmp(&key(a)).then(a.cmp(&b)).is_le();
            // The host's picks at the corners of the window around (u, top_p).
            let top_ps = if p.top_p < 1.0 {
                vec![p.top_p - TOP_P_TOL, p.top_p + TOP_P_TOL]
            } else {
                vec![p.top_p]
            };
            let mut picks = Vec::new();
            for top_p in top_ps {
                let q = SamplingParams { top_p, ..p.clone() };
                picks.push(sample_with_draw(&pen, &q, (u - DRAW_TOL).max(0.0)));
                picks.push(sample_with_draw(
                    &pen,
                    &q,
                    (u + DRAW_TOL).min(1.0 - f32::EPSILON),
                ));
            }
            let lo = picks
                .iter()
                .copied()
                .reduce(|a, b| if before(a, b) { a } else { b });
            let hi = picks
                .iter()
                .copied()
                .reduce(|a, b| if before(a, b) { b } else { a });
            let (lo, hi) = (
                lo.expect("two picks or more"),
                hi.expect("two picks or more"),
            );
            assert!(
                before(lo, d) && before(d, hi),
                "{what}: row {r}: device token {d} outside the host's picks {lo}..{hi} around \
                 draw {u} (host exact pick {})",
                w.token
            );
        }
    }
    exact
}

fn run_mix(be: &CudaBackend, vocab: usize, seed: u64, scale: f32) {
    let ps = mixed_params();
    let rows = ps.len();
    let logits = rand_bf16(rows * vocab, seed, scale);
    let lt = be.tensor_from_host(&logits, rows, vocab).unwrap();
    let hist = histories(&logits, vocab, rows);
    let forced_row = 7;
    let forced = (vocab - 1) as u32;
    let (mut exact, mut total) = (0, 0);
    for step in 0..6u64 {
        let choices: Vec<TokenChoice> = ps
            .iter()
            .enumerate()
            .map(|(r, p)| TokenChoice {
                params: p,
                step: step * 3 + r as u64,
                history: &hist[r],
                forced: (r == forced_row).then_some(forced),
            })
            .collect();
        let got = finite(be.select_tokens(&lt, &choices).unwrap());
        exact += check_rows(
            &format!("vocab {vocab} step {step}"),
            &logits,
            &choices,
            &got,
        );
        assert_eq!(got[forced_row].token, forced);
        total += rows;
    }
    // The penalty worked on a copy: the logits the log-probs read are untouched.
    assert_eq!(
        be.to_host(&lt).unwrap(),
        logits,
        "vocab {vocab}: logits changed"
    );
    println!(
        "vocab {vocab}, logit scale {scale}: {exact} of {total} picks identical to the host's"
    );
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn mixed_batch_matches_the_host_at_several_vocab_sizes() {
    let Some(be) = gpu("select_tokens mixed batch") else {
        return;
    };
    // Odd and small; odd and above one block (1024); Qwen3's vocabulary.
    for (vocab, seed) in [(7, 21), (1001, 22), (1537, 23), (151_936, 24)] {
        // Wide logits put the mass on few tokens, narrow ones spread it (top-p cuts deep).
        run_mix(&be, vocab, seed, 8.0);
        run_mix(&be, vocab, seed + 100, 1.5);
    }
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn a_penalty_that_moves_greedy_moves_it_on_the_device_too() {
    let Some(be) = gpu("select_tokens penalty") else {
        return;
    };
    let vocab = 3001;
    let mut logits = rand_bf16(vocab, 31, 2.0);
    // Token 17 is the clear maximum (positive, so the penalty divides it); token 400 the
    // runner-up; token 5 the most negative (multiplied, pushed further down).
    logits[17] = 6.0;
    logits[400] = 5.0;
    logits[5] = -7.0;
    let lt = be.tensor_from_host(&logits, 1, vocab).unwrap();
    let p = SamplingParams {
        repetition_penalty: 1.5,
        ..params(0.0)
    };
    let row = |history| TokenChoice {
        params: &p,
        step: 0,
        history,
        forced: None,
    };
    let got = finite(be.select_tokens(&lt, &[row(&[17, 5, 17])]).unwrap());
    assert_eq!(got[0].token, 400, "6 / 1.5 = 4 < 5");
    check_rows("penalty", &logits, &[row(&[17, 5, 17])], &got);
    let got = finite(be.select_tokens(&lt, &[row(&[5])]).unwrap());
    assert_eq!(got[0].token, 17);
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn non_finite_rows_are_reported_by_row_and_first_token() {
    let Some(be) = gpu("select_tokens NaN") else {
        return;
    };
    let vocab = 2053;
    let mut logits = rand_bf16(3 * vocab, 41, 4.0);
    logits[vocab + 1500] = f32::NAN;
    logits[vocab + 700] = f32::NAN;
    logits[2 * vocab + 3] = f32::INFINITY;
    let lt = be.tensor_from_host(&logits, 3, vocab).unwrap();
    let ps = mixed_params();
    let choices: Vec<TokenChoice> = ps[..3]
        .iter()
        .map(|p| TokenChoice {
            params: p,
            step: 0,
            history: &[],
            forced: None,
        })
        .collect();
    let got = be.select_tokens(&lt, &choices).unwrap();
    let want = select_on_host(&logits, &choices).unwrap();
    assert_eq!(got[1], Err(NonFinite { token: 700 }));
    assert_eq!(got[2], Err(NonFinite { token: 3 }));
    assert!(got[0].is_ok() && want[0].is_ok(), "the clean row is chosen");
    assert_eq!(&got[1..], &want[1..]);
    // A forced row is checked too (its log-prob would be NaN).
    let forced: Vec<TokenChoice> = choices
        .iter()
        .map(|c| TokenChoice {
            forced: Some(0),
            ..*c
        })
        .collect();
    let got = be.select_tokens(&lt, &forced).unwrap();
    assert_eq!(got[1], Err(NonFinite { token: 700 }));
    // NaN at token 0 of a sampled row: its order key is the largest u64, which once made the
    // kernel's binary search wrap around and never return.
    let mut row0 = rand_bf16(vocab, 42, 4.0);
    row0[0] = f32::NAN;
    let lt = be.tensor_from_host(&row0, 1, vocab).unwrap();
    let p = params(1.0);
    let sampled = [TokenChoice {
        params: &p,
        step: 3,
        history: &[],
        forced: None,
    }];
    let got = be.select_tokens(&lt, &sampled).unwrap();
    assert_eq!(got[0], Err(NonFinite { token: 0 }));
}

/// Rows asking for top alternatives get exactly the host's (the device path copies those
/// rows' bf16 logits to the host and ranks them with the same code); other rows get none.
#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn top_alternatives_match_the_host_per_asking_row() {
    let Some(be) = gpu("select_tokens top_logprobs") else {
        return;
    };
    for vocab in [1000usize, 151_936] {
        let logits = rand_bf16(3 * vocab, 43, 4.0);
        let lt = be.tensor_from_host(&logits, 3, vocab).unwrap();
        let ps = [
            SamplingParams {
                top_logprobs: 5,
                ..params(0.0)
            },
            params(1.0),
            SamplingParams {
                top_logprobs: 20,
                seed: 3,
                ..params(0.8)
            },
        ];
        let choices: Vec<TokenChoice> = ps
            .iter()
            .map(|p| TokenChoice {
                params: p,
                step: 2,
                history: &[],
                forced: None,
            })
            .collect();
        let got = finite(be.select_tokens(&lt, &choices).unwrap());
        let want = finite(select_on_host(&logits, &choices).unwrap());
        assert_eq!(got[0].top, want[0].top, "vocab {vocab}: greedy row");
        assert_eq!(
            got[0].token, got[0].top[0].0,
            "vocab {vocab}: greedy is the top one"
        );
        assert!(got[1].top.is_empty(), "vocab {vocab}: row 1 asked for none");
        assert_eq!(got[2].top, want[2].top, "vocab {vocab}: sampled row");
        assert_eq!(got[2].top.len(), 20);
    }
}

/// The choices of rows known to be finite.
fn finite(rows: Vec<RowChoice>) -> Vec<Chosen> {
    rows.into_iter().map(|r| r.expect("finite row")).collect()
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn shape_and_input_errors_are_errors() {
    let Some(be) = gpu("select_tokens errors") else {
        return;
    };
    let logits = rand_bf16(2 * 11, 51, 1.0);
    let lt = be.tensor_from_host(&logits, 2, 11).unwrap();
    let p = params(1.0);
    let row = TokenChoice {
        params: &p,
        step: 0,
        history: &[],
        forced: None,
    };
    assert!(be.select_tokens(&lt, &[row]).is_err(), "row count");
    let bad = TokenChoice {
        forced: Some(11),
        ..row
    };
    assert!(be.select_tokens(&lt, &[row, bad]).is_err(), "forced id");
    let q = SamplingParams {
        top_p: 0.0,
        ..params(1.0)
    };
    let invalid = TokenChoice { params: &q, ..row };
    assert!(be.select_tokens(&lt, &[row, invalid]).is_err(), "top_p 0");
}

/// Real model logits (a tiny fixture on the GPU, two sequences' last positions): the device
/// and the host pick the same tokens from them.
#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn model_logits_select_like_the_host() {
    let Some(be) = gpu("select_tokens model logits") else {
        return;
    };
    let dir = common::model_dir(common::MODELS[0]);
    let model = Qwen3::load(be.clone(), &dir).unwrap();
    let vocab = model.config.vocab_size;
    let mut kv = be.alloc_kv(model.kv_layout(4, 16)).unwrap();
    let a: Vec<u32> = (0..9).map(|i| (i * 37 + 11) % vocab as u32).collect();
    let b: Vec<u32> = (0..5).map(|i| (i * 53 + 2) % vocab as u32).collect();
    let mut batch = ForwardBatch::default();
    batch.push(&a, 0, &[0], 16, Logits::Last);
    batch.push(&b, 0, &[1], 16, Logits::Last);
    let lt = model.forward(&batch, &mut kv).unwrap();
    let logits = be.to_host(&lt).unwrap();
    let ps = [
        SamplingParams {
            top_p: 0.9,
            repetition_penalty: 1.2,
            seed: 3,
            ..params(0.8)
        },
        params(0.0),
    ];
    for step in 0..8 {
        let choices = [
            TokenChoice {
                params: &ps[0],
                step,
                history: &a,
                forced: None,
            },
            TokenChoice {
                params: &ps[1],
                step,
                history: &b,
                forced: None,
            },
        ];
        let got = finite(be.select_tokens(&lt, &choices).unwrap());
        check_rows(&format!("model step {step}"), &logits, &choices, &got);
    }
}

/// No GPU needed: the checker above accepts the host's own picks and rejects a wrong draw
/// counter or a wrong log-prob, so the GPU tests can fail.
#[test]
fn the_checker_accepts_host_picks_and_rejects_wrong_ones() {
    let ps = mixed_params();
    for (vocab, scale) in [(1537, 8.0), (151_936, 1.5)] {
        let rows = ps.len();
        let logits = rand_bf16(rows * vocab, 61, scale);
        let hist = histories(&logits, vocab, rows);
        let choices = |step: u64| -> Vec<TokenChoice> {
            ps.iter()
                .enumerate()
                .map(|(r, p)| TokenChoice {
                    params: p,
                    step,
                    history: &hist[r],
                    forced: (r == 7).then_some(3),
                })
                .collect()
        };
        let right = choices(0);
        let host = finite(select_on_host(&logits, &right).unwrap());
        assert_eq!(check_rows("host", &logits, &right, &host), rows);
        // Picks of another draw counter: some sampled row must be rejected.
        let other = finite(select_on_host(&logits, &choices(1)).unwrap());
        let wrong_draw = std::panic::catch_unwind(|| check_rows("draw", &logits, &right, &other));
        assert!(wrong_draw.is_err(), "vocab {vocab}: a wrong counter passed");
        let mut off = host.clone();
        off[2].logprob += 0.01;
        let wrong_lp = std::panic::catch_unwind(|| check_rows("logprob", &logits, &right, &off));
        assert!(wrong_lp.is_err(), "vocab {vocab}: a wrong log-prob passed");
    }
}
