//! The binary end to end: the embedded default model, --json output, and clean failures.

mod common;

use std::process::Command;

use common::*;

fn asyncthink(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_asyncthink"))
        .args(args)
        .output()
        .expect("run asyncthink")
}

#[test]
fn logits_of_the_embedded_default_match_transformers() {
    let r = reference("tiny-gqa4-tied");
    let p = &r.reference.prompts[1];
    let ids = p
        .ids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = asyncthink(&["logits", "--ids", &ids]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<f32> = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    let err = max_abs_diff(&ours, &r.logits[1]);
    assert!(err <= 1e-4, "max abs err {err}");
}

#[test]
fn generate_json_on_the_embedded_default() {
    let out = asyncthink(&[
        "generate",
        "--prompt",
        "What is 3 + 4?",
        "--max-new-tokens",
        "8",
        "--ignore-eos",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 8);
    assert_eq!(v["finish_reason"], "length");
    assert!(v["timing"]["decode_tokens_per_second"].as_f64().unwrap() > 0.0);
    // Sampling with a seed is repeatable across processes.
    let run = || {
        asyncthink(&[
            "generate",
            "--prompt",
            "hi",
            "--temperature",
            "0.9",
            "--top-p",
            "0.9",
            "--seed",
            "5",
            "--json",
            "--ignore-eos",
            "--max-new-tokens",
            "6",
        ])
        .stdout
    };
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&run()).unwrap(),
        serde_json::from_slice(&run()).unwrap(),
    );
    assert_eq!(a["token_ids"], b["token_ids"]);
}

#[test]
fn bad_input_fails_with_a_message_not_a_panic() {
    for args in [
        vec!["generate", "--model", "/nonexistent/model", "--prompt", "x"],
        vec!["logits", "--ids", "1,two,3"],
        vec!["logits", "--ids", "99999999"],
        vec!["generate", "--prompt", "x", "--top-p", "0"],
    ] {
        let out = asyncthink(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
