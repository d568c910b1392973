//! The CPU reference against transformers (float32, loaded from the saved checkpoints):
//! logits at every position, greedy continuations, and cached decode against recompute.

mod common;

use asyncthink::backend::Backend;
use asyncthink::engine::{Engine, EngineConfig, SamplingParams};
use asyncthink::model::{ForwardBatch, Logits};
use common::*;

/// The shared convention: CPU f32 against the transformers f32 oracle, max abs 1e-4.
const LOGITS_TOL: f32 = 1e-4;

#[test]
fn logits_match_transformers_at_every_position() {
    for name in MODELS {
        let model = load(name);
        let r = reference(name);
        let vocab = model.config.vocab_size;
        for (i, p) in r.reference.prompts.iter().enumerate() {
            let mut engine = Engine::new(&model, None, EngineConfig::default()).unwrap();
            let ours: Vec<f32> = engine.logits_all(&p.ids).unwrap().concat();
            assert_eq!(ours.len(), p.ids.len() * vocab);
            let err = max_abs_diff(&ours, &r.logits[i]);
            println!(
                "{name} prompt{i} (len {}): max abs err {err:.2e}",
                p.ids.len()
            );
            assert!(err <= LOGITS_TOL, "{name} prompt{i}: max abs err {err}");
        }
    }
}

#[test]
fn greedy_continuations_match_transformers() {
    for name in MODELS {
        let model = load(name);
        let r = reference(name);
        for case in &r.reference.greedy {
            let params = SamplingParams {
                max_new_tokens: case.new_ids.len(),
                ignore_eos: true,
                ..Default::default()
            };
            let mut engine = Engine::new(&model, None, EngineConfig::default()).unwrap();
            let out = engine.generate(&case.prompt_ids, &params, |_| {}).unwrap();
            assert_eq!(
                out.token_ids, case.new_ids,
                "{name}: greedy continuation differs"
            );
        }
    }
}

/// Feeding tokens one at a time through the cache gives the logits of one full pass,
/// across block boundaries (block size 16, 40 tokens).
#[test]
fn cached_decode_equals_recompute() {
    for name in MODELS {
        let model = load(name);
        let vocab = model.config.vocab_size;
        let ids: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % vocab as u32).collect();
        let block_size = 16;
        let layout = model.kv_layout(4, block_size);

        let mut full_kv = model.backend.alloc_kv(layout).unwrap();
        let mut batch = ForwardBatch::default();
        batch.push(&ids, 0, &[0, 1, 2], block_size, Logits::All);
        let full = model
            .backend
            .to_host(&model.forward(&batch, &mut full_kv).unwrap())
            .unwrap();

        // A different block order for the incremental run, so paging is really exercised.
        let mut kv = model.backend.alloc_kv(layout).unwrap();
        let table: Vec<u32> = vec![3, 1, 0];
        let prefill = 5;
        let mut batch = ForwardBatch::default();
        batch.push(&ids[..prefill], 0, &table, block_size, Logits::All);
        let mut got = model
            .backend
            .to_host(&model.forward(&batch, &mut kv).unwrap())
            .unwrap();
        for t in prefill..ids.len() {
            let mut batch = ForwardBatch::default();
            batch.push(&ids[t..t + 1], t, &table, block_size, Logits::Last);
            got.extend(
                model
                    .backend
                    .to_host(&model.forward(&batch, &mut kv).unwrap())
                    .unwrap(),
            );
        }
        let err = max_abs_diff(&got, &full);
        println!("{name}: cached vs recomputed max abs diff {err:.2e}");
        assert_eq!(got.len(), ids.len() * vocab);
        assert!(
            err < 1e-5,
            "{name}: cached decode differs from recompute by {err}"
        );
    }
}
