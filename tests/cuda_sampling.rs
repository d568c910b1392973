//! Device token selection (`CudaBackend::select_tokens`: repetition penalty, forced tokens,
//! greedy, seeded temperature/top-k/top-p/min-p, log-probs, NaN flags) against the host
//! reference (`engine::sampling::select_on_host`, the CPU backend's default) on the same bf16
//! logits, mixed settings in one batch, several vocabulary sizes.
//!
//! Without a GPU (or driver, NVRTC, CUDA headers) each test prints "skipped: <reason>" and
//! returns. No GPU has run these yet (docs/gpu-runs.md).
#![cfg(feature = "cuda")]

mod common;

use asyncthink::backend::cuda::CudaBackend;
use asyncthink::backend::{Backend, Chosen, TokenChoice};
use asyncthink::engine::SamplingParams;
use asyncthink::engine::sampling::{counter_uniform, select_on_host};
use asyncthink::model::{ForwardBatch, Logits, Qwen3};
use common::gpu::{gpu, rand_bf16};

/// Log-probs: the device sums f32 `expf` terms (≤ 2 ulp each) in f64 and takes the log in
/// f64; the host does everything in f64. That differs by ~1e-6 at these magnitudes; 1e-4 (plus
/// 1e-5 relative) keeps margin, while the log-prob of a wrong token or a wrong row's
/// normaliser is off by at least a bf16 logit step (≥ 1/32 here).
const LOGPROB_TOL: f32 = 1e-4;

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

fn assert_same(what: &str, got: &[Chosen], want: &[Chosen], draws: &[String]) {
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.token, w.token,
            "{what}: row {r}: device token {} vs host {} ({})",
            g.token, w.token, draws[r]
        );
        let err = (g.logprob - w.logprob).abs();
        assert!(
            err <= LOGPROB_TOL + 1e-5 * w.logprob.abs(),
            "{what}: row {r}: log-prob {} vs host {}",
            g.logprob,
            w.logprob
        );
    }
}

fn run_mix(be: &CudaBackend, vocab: usize, seed: u64, scale: f32) {
    let ps = mixed_params();
    let rows = ps.len();
    let logits = rand_bf16(rows * vocab, seed, scale);
    let lt = be.tensor_from_host(&logits, rows, vocab).unwrap();
    let hist = histories(&logits, vocab, rows);
    let forced_row = 7;
    let forced = (vocab - 1) as u32;
    let mut worst = 0f32;
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
        let want = select_on_host(&logits, &choices).unwrap();
        let got = be.select_tokens(&lt, &choices).unwrap();
        let draws: Vec<String> = choices
            .iter()
            .map(|c| format!("draw {}", counter_uniform(c.params.seed, c.step)))
            .collect();
        assert_same(&format!("vocab {vocab} step {step}"), &got, &want, &draws);
        assert_eq!(got[forced_row].token, forced);
        for (g, w) in got.iter().zip(&want) {
            worst = worst.max((g.logprob - w.logprob).abs());
        }
    }
    // The penalty worked on a copy: the logits the log-probs read are untouched.
    assert_eq!(
        be.to_host(&lt).unwrap(),
        logits,
        "vocab {vocab}: logits changed"
    );
    println!("vocab {vocab}: {rows} rows x 6 steps match; worst log-prob diff {worst:.2e}");
}

#[test]
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
    let got = be.select_tokens(&lt, &[row(&[17, 5, 17])]).unwrap();
    assert_eq!(got[0].token, 400, "6 / 1.5 = 4 < 5");
    let want = select_on_host(&logits, &[row(&[17, 5, 17])]).unwrap();
    assert_same("penalty", &got, &want, &["greedy".into()]);
    let got = be.select_tokens(&lt, &[row(&[5])]).unwrap();
    assert_eq!(got[0].token, 17);
}

#[test]
fn nan_rows_are_reported_by_row_and_first_token() {
    let Some(be) = gpu("select_tokens NaN") else {
        return;
    };
    let vocab = 2053;
    let mut logits = rand_bf16(3 * vocab, 41, 4.0);
    logits[vocab + 1500] = f32::NAN;
    logits[vocab + 700] = f32::NAN;
    logits[2 * vocab + 3] = f32::NAN;
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
    let got = be.select_tokens(&lt, &choices).unwrap_err().to_string();
    let want = select_on_host(&logits, &choices).unwrap_err().to_string();
    assert!(got.contains("row 1") && got.contains("token 700"), "{got}");
    assert_eq!(got, want);
    // A forced row is checked too (its log-prob would be NaN).
    let forced: Vec<TokenChoice> = choices
        .iter()
        .map(|c| TokenChoice {
            forced: Some(0),
            ..*c
        })
        .collect();
    let got = be.select_tokens(&lt, &forced).unwrap_err().to_string();
    assert!(got.contains("row 1") && got.contains("token 700"), "{got}");
}

#[test]
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
        let want = select_on_host(&logits, &choices).unwrap();
        let got = be.select_tokens(&lt, &choices).unwrap();
        assert_same(
            &format!("model step {step}"),
            &got,
            &want,
            &["sampled".into(), "greedy".into()],
        );
    }
}
