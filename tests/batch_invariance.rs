//! Batch invariance of the CPU backend: a sequence's numbers do not depend on how it was
//! batched. Every sampled token and every log-prob (the chosen token's and its top
//! alternatives', compared as bits) of a request run alone must come out the same when it
//! shares steps with others, when its prompt is prefilled in chunks, when it is preempted
//! and its context recomputed by prefill, and when a cached prefix replaces its prefill;
//! at both precisions.

mod common;

use asyncthink::backend::cpu::{CpuBackend, Precision};
use asyncthink::engine::{Engine, EngineConfig, SamplingParams, SeqId};
use asyncthink::model::Qwen3;
use common::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a request produced, log-probs as bits so equality means bitwise equality.
#[derive(Debug, PartialEq)]
struct Output {
    tokens: Vec<u32>,
    logprobs: Vec<u32>,
    top: Vec<Vec<(u32, u32)>>,
}

struct Request {
    prompt: Vec<u32>,
    params: SamplingParams,
}

/// `count` requests: prompt lengths across block boundaries, some sharing a prefix, a third
/// greedy and the rest sampled with their own seeds near the distribution's bulk, where a
/// last-bit change in a logit flips a draw.
fn requests(model: &Qwen3<CpuBackend>, count: usize, new_tokens: usize) -> Vec<Request> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let vocab = model.config.vocab_size as u32 - 8;
    let shared: Vec<u32> = (0..40).map(|_| rng.random_range(0..vocab)).collect();
    (0..count)
        .map(|i| {
            let len = [1, 7, 16, 17, 31, 48, 70][i % 7] + rng.random_range(0..3);
            let mut prompt: Vec<u32> = (0..len).map(|_| rng.random_range(0..vocab)).collect();
            if i % 5 == 0 {
                prompt.splice(0..0, shared.iter().copied());
            }
            let params = SamplingParams {
                temperature: if i % 3 == 0 { 0.0 } else { 1.0 },
                top_p: if i % 2 == 0 { 1.0 } else { 0.9 },
                seed: 1000 + i as u64,
                max_new_tokens: new_tokens,
                ignore_eos: true,
                top_logprobs: 3,
                ..Default::default()
            };
            Request { prompt, params }
        })
        .collect()
}

fn run(engine: &mut Engine<'_, CpuBackend>, reqs: &[Request]) -> Vec<Output> {
    let ids: Vec<SeqId> = reqs
        .iter()
        .map(|r| {
            engine
                .add_request(r.prompt.clone(), r.params.clone())
                .unwrap()
        })
        .collect();
    while engine.has_unfinished() {
        engine.step().unwrap();
    }
    ids.iter()
        .map(|&id| {
            let seq = engine.take_finished(id).unwrap();
            Output {
                tokens: seq.generated.clone(),
                logprobs: seq.logprobs.iter().map(|l| l.to_bits()).collect(),
                top: seq
                    .top_logprobs
                    .iter()
                    .map(|t| t.iter().map(|(id, l)| (*id, l.to_bits())).collect())
                    .collect(),
            }
        })
        .collect()
}

fn alone(model: &Qwen3<CpuBackend>, reqs: &[Request]) -> Vec<Output> {
    reqs.iter()
        .map(|r| {
            let cfg = EngineConfig {
                prefix_caching: false,
                ..Default::default()
            };
            let mut engine = Engine::new(model, None, cfg).unwrap();
            run(&mut engine, std::slice::from_ref(r)).pop().unwrap()
        })
        .collect()
}

fn assert_same(got: &[Output], want: &[Output], how: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "request {i}, {how}");
    }
}

fn load_at(name: &str, precision: Precision) -> Qwen3<CpuBackend> {
    Qwen3::load(CpuBackend::new(precision), &model_dir(name)).unwrap()
}

#[test]
fn every_request_is_bitwise_the_same_however_it_was_batched() {
    let models = [
        ("tiny-gqa4-tied", Precision::F32),
        ("tiny-mha-untied-hd", Precision::F32),
        ("tiny-gqa2-sharded-bf16", Precision::F32),
        ("tiny-gqa4-tied", Precision::Bf16),
        ("tiny-gqa2-sharded-bf16", Precision::Bf16),
    ];
    for (name, precision) in models {
        let model = load_at(name, precision);
        let name = format!("{name} at {precision}");
        let reqs = requests(&model, 21, 16);
        let want = alone(&model, &reqs);
        let batched = |cfg: EngineConfig| {
            let mut engine = Engine::new(&model, None, cfg).unwrap();
            let out = run(&mut engine, &reqs);
            (
                out,
                engine.stats.preemptions,
                engine.stats.prefix_hit_tokens,
            )
        };
        let (all, _, hits) = batched(EngineConfig::default());
        assert!(hits > 0, "{name}: the shared prefix came from the cache");
        assert_same(&all, &want, &format!("{name}, all in one batch"));
        let (chunked, _, _) = batched(EngineConfig {
            max_batched_tokens: 24,
            max_num_seqs: 5,
            prefix_caching: false,
            ..Default::default()
        });
        assert_same(&chunked, &want, &format!("{name}, 24-token chunks"));
        let (preempted, preemptions, _) = batched(EngineConfig {
            num_blocks: 14,
            max_batched_tokens: 64,
            ..Default::default()
        });
        assert!(
            preemptions > 0,
            "{name}: the small pool was meant to preempt"
        );
        assert_same(
            &preempted,
            &want,
            &format!("{name}, {preemptions} preemptions"),
        );
    }
}

/// The load: 200 mixed requests with and without preemption give the same tokens.
#[test]
fn two_hundred_sampled_requests_survive_preemption_unchanged() {
    for precision in [Precision::F32, Precision::Bf16] {
        two_hundred_at(precision);
    }
}

fn two_hundred_at(precision: Precision) {
    let model = load_at("tiny-gqa4-tied", precision);
    let reqs = requests(&model, 200, 24);
    let mut roomy = Engine::new(&model, None, EngineConfig::default()).unwrap();
    let want = run(&mut roomy, &reqs);
    let mut tight = Engine::new(
        &model,
        None,
        EngineConfig {
            num_blocks: 40,
            ..Default::default()
        },
    )
    .unwrap();
    let got = run(&mut tight, &reqs);
    assert!(
        tight.stats.preemptions >= 10,
        "only {} preemptions",
        tight.stats.preemptions
    );
    assert_same(
        &got,
        &want,
        &format!("200 requests, 40 blocks, {precision}"),
    );
}
