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

/// The embedded default is models/asyncthink-products; transformers' logits of it come from
/// tests/fixtures/check_saved_checkpoint.py (tests/fixtures/README.md).
#[test]
fn logits_of_the_embedded_default_match_transformers() {
    let evidence: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            fixtures().join("reference/asyncthink-products.transformers.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(evidence["loaded_ok"], true);
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
            })
            .collect()
    };
    for (name, case) in evidence["logits"].as_object().unwrap() {
        let ids = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let out = asyncthink(&["logits", "--ids", &ids]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let err = max_abs_diff(&floats(&v["logits"]), &floats(&case["logits"]));
        assert!(err <= 1e-4, "{name}: max abs err {err}");
    }
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

/// Every command with `--device cuda` either runs on the GPU or, with none, exits 1 naming
/// what is missing (driver, device, NVRTC); it never panics.
#[cfg(feature = "cuda")]
#[test]
fn device_cuda_runs_or_fails_cleanly() {
    use asyncthink::backend::cuda::probe;
    let gpu = asyncthink::backend::cuda::CudaBackend::new(0).err();
    if let Some(e) = gpu.as_ref().filter(|_| probe::gpu_required()) {
        panic!("no GPU under {}=1: {e}", probe::REQUIRE_GPU_ENV);
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\": 1, \"prompt\": \"What is 3 + 4?\"}\n").unwrap();
    let output = dir.path().join("out.jsonl");
    let (input, output) = (input.to_str().unwrap(), output.to_str().unwrap());
    for args in [
        vec!["logits", "--ids", "1,2,3", "--device", "cuda"],
        vec![
            "generate",
            "--prompt",
            "x",
            "--max-new-tokens",
            "4",
            "--device",
            "cuda",
        ],
        vec![
            "batch",
            "--input",
            input,
            "--output",
            output,
            "--max-new-tokens",
            "4",
            "--device",
            "cuda",
        ],
        vec![
            "think",
            "--prompt",
            "Compute 3 + 7.",
            "--organizer-tokens",
            "8",
            "--worker-tokens",
            "4",
            "--device",
            "cuda",
        ],
    ] {
        let out = asyncthink(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        match &gpu {
            None => assert!(out.status.success(), "{args:?} on the GPU: {err}"),
            Some(reason) => {
                assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
                assert!(
                    err.contains(&reason.to_string()),
                    "{args:?}: {err} (expected {reason})"
                );
            }
        }
    }
}

#[test]
fn batch_keeps_order_and_ids_and_reports_bad_lines_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let lines = [
        r#"{"id": "a", "prompt": "What is 3 + 4?"}"#,
        r#"{"id": 7, "messages": [{"role": "user", "content": "hi"}], "sampling": {"max_new_tokens": 3, "ignore_eos": true}}"#,
        r#"{"id": "empty", "prompt_ids": []}"#,
        "not json",
        r#"{"id": "bad-param", "prompt": "x", "sampling": {"top_p": 0}}"#,
        r#"{"id": "too-long", "prompt_ids": [LONG]}"#,
        r#"{"id": "z", "prompt_ids": [1, 2, 3], "sampling": {"max_new_tokens": 5, "ignore_eos": true}}"#,
        r#"{"id": "tops", "prompt_ids": [1, 2, 3], "sampling": {"max_new_tokens": 3, "ignore_eos": true, "top_logprobs": 2}}"#,
        r#"{"id": "bad-tops", "prompt": "x", "sampling": {"top_logprobs": 21}}"#,
    ];
    let long = (0..1100)
        .map(|i| (i % 400).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let text = lines.join("\n").replace("LONG", &long);
    std::fs::write(&input, text).unwrap();
    let out = asyncthink(&[
        "batch",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--max-new-tokens",
        "4",
        "--ignore-eos",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 9);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i);
    }
    assert_eq!(results[0]["id"], "a");
    assert_eq!(results[0]["token_ids"].as_array().unwrap().len(), 4);
    assert_eq!(results[1]["id"], 7);
    assert_eq!(results[1]["token_ids"].as_array().unwrap().len(), 3);
    assert!(
        results[2]["error"]
            .as_str()
            .unwrap()
            .contains("empty prompt")
    );
    assert!(results[3]["error"].as_str().unwrap().contains("line 4"));
    assert!(results[4]["error"].as_str().unwrap().contains("top_p"));
    assert!(
        results[5]["error"]
            .as_str()
            .unwrap()
            .contains("max_position_embeddings")
    );
    assert_eq!(results[6]["token_ids"].as_array().unwrap().len(), 5);
    assert!(
        results[6].get("top_logprobs").is_none(),
        "none asked: {}",
        results[6]
    );
    // Greedy with 2 alternatives: per token, the chosen id and log-prob lead its list.
    let tops = results[7]["top_logprobs"].as_array().unwrap();
    let ids = results[7]["token_ids"].as_array().unwrap();
    let lps = results[7]["logprobs"].as_array().unwrap();
    assert_eq!((tops.len(), ids.len(), lps.len()), (3, 3, 3));
    for ((t, id), lp) in tops.iter().zip(ids).zip(lps) {
        let t = t.as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((&t[0][0], &t[0][1]), (id, lp));
        assert!(t[0][1].as_f64() >= t[1][1].as_f64());
    }
    assert!(
        results[8]["error"]
            .as_str()
            .unwrap()
            .contains("top_logprobs")
    );
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("9 requests (5 failed)"), "{summary}");
}

/// The README's main command, shortened: every stage of the pipeline runs and writes its
/// outputs (the full run's table is in docs/results.md).
#[test]
fn demo_pipeline_runs_end_to_end_shortened() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let o = asyncthink(&[
        "demo",
        "--out",
        out.to_str().unwrap(),
        "--sft-steps",
        "10",
        "--grpo-steps",
        "1",
        "--traces",
        "16",
        "--train-items",
        "8",
        "--eval-items",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "table.md",
        "results.json",
        "sft_loss.svg",
        "forks.svg",
        "grpo/reward.svg",
        "grpo/final/model.safetensors",
        "sft/model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let models: Vec<&str> = r["eval"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        models,
        ["untrained", "SFT", "SFT + GRPO", "SFT + GRPO", "SFT + GRPO"]
    );
    assert_eq!(r["grpo"].as_array().unwrap().len(), 1);
    let loss = |k: &str| r[k].as_f64().unwrap();
    assert!(loss("sft_loss_last") < loss("sft_loss_first"));
}
