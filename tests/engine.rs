//! The batching engine against single-sequence runs, and its block bookkeeping under
//! random load.

mod common;

use asyncthink::backend::cpu::CpuBackend;
use asyncthink::engine::{Engine, EngineConfig, FinishReason, SamplingParams, SeqId};
use asyncthink::model::Qwen3;
use common::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens: n,
        ignore_eos: true,
        ..Default::default()
    }
}

/// 16+ prompts of mixed lengths (1 to 70 tokens: under, at and across block boundaries).
fn prompts(model: &Qwen3<CpuBackend>, count: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vocab = model.config.vocab_size as u32 - 8; // leave out unused rows
    (0..count)
        .map(|i| {
            let len = [1, 5, 15, 16, 17, 33, 48, 70][i % 8] + rng.random_range(0..3);
            (0..len).map(|_| rng.random_range(0..vocab)).collect()
        })
        .collect()
}

fn single(model: &Qwen3<CpuBackend>, prompt: &[u32], params: &SamplingParams) -> Vec<u32> {
    let mut engine = Engine::new(
        model,
        None,
        EngineConfig {
            prefix_caching: false,
            ..Default::default()
        },
    )
    .unwrap();
    engine.generate(prompt, params, |_| {}).unwrap().token_ids
}

/// Runs every prompt through one engine; returns outputs in input order.
fn batched(
    engine: &mut Engine<'_, CpuBackend>,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
) -> Vec<Vec<u32>> {
    let ids: Vec<SeqId> = prompts
        .iter()
        .map(|p| engine.add_request(p.clone(), params.clone()).unwrap())
        .collect();
    while engine.has_unfinished() {
        engine.step().unwrap();
        engine.check_invariants().unwrap();
    }
    ids.iter()
        .map(|&id| engine.take_finished(id).unwrap().output_ids().to_vec())
        .collect()
}

#[test]
fn batched_greedy_equals_single_sequence_greedy() {
    let model = load("tiny-gqa4-tied");
    let ps = prompts(&model, 18, 1);
    let params = greedy(12);
    let want: Vec<Vec<u32>> = ps.iter().map(|p| single(&model, p, &params)).collect();
    for chunked in [true, false] {
        let cfg = EngineConfig {
            chunked_prefill: chunked,
            max_batched_tokens: 64,
            ..Default::default()
        };
        let mut engine = Engine::new(&model, None, cfg).unwrap();
        let got = batched(&mut engine, &ps, &params);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g,
                w,
                "prompt {i} (len {}), chunked_prefill={chunked}",
                ps[i].len()
            );
        }
        assert!(
            engine.stats.steps < (ps.len() * 12) as u64,
            "sequences really shared steps"
        );
    }
}

#[test]
fn preempted_sequences_resume_with_the_same_output() {
    let model = load("tiny-mha-untied-hd");
    let ps = prompts(&model, 8, 2);
    let params = greedy(24);
    let want: Vec<Vec<u32>> = ps.iter().map(|p| single(&model, p, &params)).collect();
    // 12 blocks of 16 for 8 sequences of up to ~96 tokens: they cannot all fit at once.
    let cfg = EngineConfig {
        num_blocks: 12,
        max_batched_tokens: 64,
        ..Default::default()
    };
    let mut engine = Engine::new(&model, None, cfg).unwrap();
    let got = batched(&mut engine, &ps, &params);
    assert!(
        engine.stats.preemptions > 0,
        "the pool was meant to force preemption"
    );
    assert_eq!(got, want);
    assert_eq!(engine.num_free_blocks(), 12);
}

#[test]
fn second_request_with_a_shared_prefix_prefills_only_its_new_tokens() {
    let model = load("tiny-gqa4-tied");
    let mut engine = Engine::new(&model, None, EngineConfig::default()).unwrap();
    let first: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 500).collect();
    engine.generate(&first, &greedy(4), |_| {}).unwrap();

    let mut second = first[..35].to_vec();
    second.extend([9, 8, 7, 6, 5]);
    let before = engine.stats.clone();
    let id = engine.add_request(second.clone(), greedy(1)).unwrap();
    engine.step().unwrap();
    // Two full blocks (32 tokens) are cached; the other 8 are computed.
    assert_eq!(
        engine.stats.prefix_hit_tokens - before.prefix_hit_tokens,
        32
    );
    assert_eq!(engine.stats.computed_tokens - before.computed_tokens, 8);
    let out = engine.take_finished(id).unwrap();
    assert_eq!(out.cached_prompt_tokens, 32);
    // And the cached blocks give the same answer as computing everything.
    assert_eq!(out.output_ids(), &single(&model, &second, &greedy(1))[..]);
}

#[test]
fn forked_children_share_blocks_and_continue_correctly() {
    let model = load("tiny-gqa4-tied");
    let prompt: Vec<u32> = (0..21).map(|i| (i * 13 + 1) % 500).collect();
    let want = single(&model, &prompt, &greedy(20));

    let mut engine = Engine::new(&model, None, EngineConfig::default()).unwrap();
    let parent = engine.add_request(prompt.clone(), greedy(20)).unwrap();
    engine.step().unwrap(); // prefill + first token: 22 tokens, the second block partly full
    let used_before = engine.config().num_blocks - engine.num_free_blocks();
    let children: Vec<SeqId> = (0..3).map(|_| engine.fork(parent, None).unwrap()).collect();
    assert_eq!(
        engine.config().num_blocks - engine.num_free_blocks(),
        used_before,
        "a fork allocates nothing"
    );
    engine.check_invariants().unwrap();
    while engine.has_unfinished() {
        engine.step().unwrap();
        engine.check_invariants().unwrap();
    }
    for id in std::iter::once(parent).chain(children) {
        // Copy-on-write kept each writer's last block private: all equal the single run.
        assert_eq!(
            engine.take_finished(id).unwrap().output_ids(),
            &want[..],
            "sequence {id}"
        );
    }
}

#[test]
fn random_arrivals_aborts_forks_and_completions_never_leak_blocks() {
    let model = load("tiny-gqa4-tied");
    for seed in 0..3u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cfg = EngineConfig {
            block_size: 4,
            num_blocks: 24,
            max_batched_tokens: 24,
            max_num_seqs: 6,
            ..Default::default()
        };
        let mut engine = Engine::new(&model, None, cfg).unwrap();
        let mut live: Vec<SeqId> = Vec::new();
        let mut finished = 0;
        for step in 0..1200 {
            match rng.random_range(0..10) {
                0..=2 => {
                    let len = rng.random_range(1..30);
                    // Half the prompts share a prefix, so the prefix cache is exercised.
                    let base = if rng.random_bool(0.5) {
                        0
                    } else {
                        rng.random_range(1..400)
                    };
                    let prompt: Vec<u32> = (0..len).map(|i| (base + i) % 500).collect();
                    let params = SamplingParams {
                        max_new_tokens: rng.random_range(1..12),
                        temperature: 0.8,
                        seed: step,
                        ignore_eos: true,
                        ..Default::default()
                    };
                    live.push(engine.add_request(prompt, params).unwrap());
                }
                3 if !live.is_empty() => {
                    let id = live[rng.random_range(0..live.len())];
                    if engine.abort(id).is_ok() {
                        assert_eq!(
                            engine.sequence(id).unwrap().finish_reason,
                            Some(FinishReason::Aborted)
                        );
                    }
                }
                4 if !live.is_empty() => {
                    let id = live[rng.random_range(0..live.len())];
                    if let Ok(child) = engine.fork(
                        id,
                        Some(SamplingParams {
                            seed: step + 7,
                            ..engine.sequence(id).unwrap().params.clone()
                        }),
                    ) {
                        live.push(child);
                    }
                }
                _ => {}
            }
            engine.step().unwrap();
            engine
                .check_invariants()
                .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
            live.retain(|&id| {
                let done = engine.take_finished(id).is_some();
                finished += usize::from(done);
                !done
            });
        }
        while engine.has_unfinished() {
            engine.step().unwrap();
            engine.check_invariants().unwrap();
        }
        assert_eq!(
            engine.num_free_blocks(),
            24,
            "seed {seed}: every block returned"
        );
        assert!(
            finished > 100 && engine.stats.preemptions > 0,
            "seed {seed}: load was real"
        );
    }
}

/// Forced tokens (the executor's scripted policy, injected text) come out first, in order,
/// with the model's log-probability of each; sampling then continues as if the prompt had
/// ended with them, and they count against max_new_tokens.
#[test]
fn forced_tokens_come_first_then_sampling_resumes() {
    let model = load("tiny-gqa4-tied");
    let prompt: Vec<u32> = (0..21).map(|i| (i * 13 + 5) % 500).collect();
    let forced = [17u32, 300, 42];
    let mut engine = Engine::new(&model, None, EngineConfig::default()).unwrap();
    // A neighbour in the batch, so the forced row is not alone.
    let other = engine.add_request(prompt[..9].to_vec(), greedy(8)).unwrap();
    let id = engine.add_request(prompt.clone(), greedy(8)).unwrap();
    engine.force_tokens(id, &forced).unwrap();
    while engine.has_unfinished() {
        engine.step().unwrap();
        engine.check_invariants().unwrap();
    }
    let seq = engine.take_finished(id).unwrap();
    assert_eq!(seq.output_ids().len(), 8);
    assert_eq!(&seq.output_ids()[..3], &forced);

    let mut extended = prompt.clone();
    extended.extend(forced);
    assert_eq!(
        &seq.output_ids()[3..],
        &single(&model, &extended, &greedy(5))[..]
    );

    let logits = engine.logits_all(&extended).unwrap();
    for (k, &t) in forced.iter().enumerate() {
        let row = &logits[prompt.len() - 1 + k];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
        let want = row[t as usize] - lse;
        assert!(
            (seq.logprobs[k] - want).abs() < 1e-5,
            "forced token {k}: log-prob {} vs {want}",
            seq.logprobs[k]
        );
    }
    assert!(engine.take_finished(other).is_some());
    assert!(
        engine.force_tokens(id, &[9999]).is_err(),
        "finished or unknown sequences and ids past the vocabulary are errors"
    );
}

/// The engine's n-th token (forced ones included) is what `select_on_host` picks from that
/// position's logits at draw counter n: seeded sampling is counter-based (the same on every
/// backend), penalised by the history so far, and each log-prob is the raw logits'.
#[test]
fn sampled_tokens_follow_the_draw_counter() {
    use asyncthink::backend::TokenChoice;
    use asyncthink::engine::sampling::select_on_host;

    let model = load("tiny-gqa4-tied");
    let prompt: Vec<u32> = (0..11).map(|i| (i * 29 + 3) % 500).collect();
    let forced = [17u32, 300];
    let params = SamplingParams {
        temperature: 1.2,
        top_p: 0.95,
        repetition_penalty: 1.3,
        seed: 77,
        max_new_tokens: 10,
        ignore_eos: true,
        ..Default::default()
    };
    let mut engine = Engine::new(&model, None, EngineConfig::default()).unwrap();
    let id = engine.add_request(prompt.clone(), params.clone()).unwrap();
    engine.force_tokens(id, &forced).unwrap();
    while engine.has_unfinished() {
        engine.step().unwrap();
    }
    let seq = engine.take_finished(id).unwrap();
    assert_eq!(seq.generated.len(), 10);
    let logits = engine.logits_all(&seq.tokens).unwrap();
    let mut differs_from_greedy = false;
    for (n, &pos) in seq.generated_positions.iter().enumerate() {
        let row = &logits[pos - 1];
        let choice = TokenChoice {
            params: &params,
            step: n as u64,
            history: &seq.tokens[..pos],
            forced: forced.get(n).copied(),
        };
        let want = select_on_host(row, &[choice]).unwrap().remove(0).unwrap();
        assert_eq!(seq.generated[n], want.token, "token {n}");
        assert!(
            (seq.logprobs[n] - want.logprob).abs() < 1e-4,
            "token {n}: log-prob {} vs {}",
            seq.logprobs[n],
            want.logprob
        );
        let argmax = asyncthink::engine::sampling::argmax(row);
        differs_from_greedy |= n >= forced.len() && want.token != argmax;
    }
    assert!(
        differs_from_greedy,
        "the settings should make sampling visible"
    );
}

/// As in vLLM and the OpenAI API, zero new tokens is refused, not quietly one token.
#[test]
fn a_request_for_zero_new_tokens_is_refused() {
    let model = load("tiny-gqa4-tied");
    let mut engine = Engine::new(&model, None, EngineConfig::default()).unwrap();
    let err = engine
        .add_request(vec![1, 2, 3], greedy(0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_new_tokens must be at least 1"), "{err}");
    assert!(!engine.has_unfinished());
    let err = engine.generate(&[1, 2, 3], &greedy(0), |_| {}).unwrap_err();
    assert!(err.to_string().contains("max_new_tokens"), "{err}");
    // One token is the smallest request, and it gets exactly one.
    let out = engine.generate(&[1, 2, 3], &greedy(1), |_| {}).unwrap();
    assert_eq!(out.token_ids.len(), 1);
    assert_eq!(out.finish_reason, FinishReason::Length);
}
