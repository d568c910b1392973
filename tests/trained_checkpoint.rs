//! A checkpoint written by this trainer loads in transformers with every weight, and both
//! engines compute the same logits from it. The evidence (transformers' logits on the
//! checkpoint of the sft run below) was made once by tests/fixtures/check_saved_checkpoint.py
//! and is committed; this test recreates the checkpoint with the same run and compares.

mod common;

use std::process::Command;

use asyncthink::backend::cpu::CpuBackend;
use asyncthink::engine::{Engine, EngineConfig};
use asyncthink::model::Qwen3;
use common::*;

#[test]
fn trainer_checkpoint_matches_transformers_logits() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixtures().join("sft/traces.jsonl");
    let start = fixtures().join("models/tiny-gqa4-tied");
    // Exactly the run whose checkpoint transformers loaded (see the fixture README).
    let out = Command::new(env!("CARGO_BIN_EXE_asyncthink"))
        .args([
            "sft",
            "--model",
            start.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
        ])
        .args([
            "--steps",
            "3",
            "--lr",
            "1e-2",
            "--warmup-steps",
            "1",
            "--batch-tokens",
            "512",
            "--seed",
            "0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let evidence: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/trained-checkpoint.transformers.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(evidence["loaded_ok"], true);
    let model = Qwen3::load(CpuBackend::default(), &dir.path().join("final")).unwrap();
    let mut engine = Engine::new(&model, None, EngineConfig::default()).unwrap();
    for (name, case) in evidence["logits"].as_object().unwrap() {
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<f32> = case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
            })
            .collect();
        let ours: Vec<f32> = engine.logits_all(&ids).unwrap().concat();
        let err = max_abs_diff(&ours, &want);
        println!("{name}: max abs err {err:.2e} against transformers");
        assert!(err <= 1e-4, "{name}: {err}");
    }
}
