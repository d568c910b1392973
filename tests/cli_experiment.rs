//! `asyncthink experiment` end to end at smoke size: every stage runs (fresh model, traces,
//! both SFTs, both GRPOs, every method measured, latency alone, pictures), and bad flags
//! are refused before any work. The real run's figures are in docs/results.md.

use std::process::Command;

fn asyncthink(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_asyncthink"))
        .args(args)
        .output()
        .expect("run asyncthink")
}

#[test]
fn the_experiment_runs_every_stage_at_smoke_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exp");
    let o = asyncthink(&[
        "experiment",
        "--out",
        out.to_str().unwrap(),
        "--hidden",
        "32",
        "--layers",
        "1",
        "--train-items",
        "16",
        "--eval-items",
        "6",
        "--sft-steps",
        "3",
        "--sft-batch-tokens",
        "512",
        "--grpo-steps",
        "1",
        "--grpo-prompts",
        "2",
        "--grpo-group",
        "2",
        "--latency-questions",
        "2",
        "--threads",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    for f in [
        "init/model.safetensors",
        "sft/model.safetensors",
        "sft-fixed/model.safetensors",
        "grpo/final/model.safetensors",
        "grpo-lambda0/final/model.safetensors",
        "table.md",
        "latency.md",
        "results.json",
        "latency_accuracy.svg",
        "structures.svg",
        "sft_loss.svg",
    ] {
        assert!(out.join(f).exists(), "no {f}: {stderr}");
    }
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let rows = results["rows"].as_array().unwrap();
    // c = 2 and 4, sequential and parallel after GRPO; c = 2, 4 and sequential after SFT;
    // the two ablations.
    assert_eq!(rows.len(), 9, "{rows:?}");
    for r in rows {
        assert_eq!(r["questions"], 6);
        let (lo, hi) = (
            r["accuracy_ci95"][0].as_f64().unwrap(),
            r["accuracy_ci95"][1].as_f64().unwrap(),
        );
        let acc = r["accuracy"].as_f64().unwrap();
        assert!(lo <= acc && acc <= hi, "{r}");
    }
    assert_eq!(results["latency_alone"].as_array().unwrap().len(), 3);
    // The fresh model's tokenizer holds the tags as single tokens.
    let tok = std::fs::read_to_string(out.join("init/tokenizer.json")).unwrap();
    assert!(tok.contains("\"<FORK-1>\"") && tok.contains("\"</RETURN>\""));
}

#[test]
fn bad_experiment_flags_are_refused_by_name() {
    for (flag, value) in [
        ("--hidden", "48"),
        ("--grpo-group", "1"),
        ("--tau", "0"),
        ("--eval-items", "0"),
    ] {
        let o = asyncthink(&["experiment", "--out", "/nonexistent/never", flag, value]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}

/// The committed experiment model (models/asyncthink-products, seed 0's SFT + GRPO) still
/// answers through today's engine, executor and tokenizer: greedy, on fresh questions, it
/// must keep the format and nearly every answer. A change that breaks what the model
/// learned (tokenization of the tags, the chat prompt, the join insertion) fails here.
#[test]
fn the_committed_experiment_model_still_answers_products() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/asyncthink-products");
    let dir = tempfile::tempdir().unwrap();
    let items = dir.path().join("items.jsonl");
    let o = asyncthink(&[
        "data",
        "gen",
        "--task",
        "products",
        "--n",
        "40",
        "--seed",
        "11",
        "--out",
        items.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (mode, capacity) in [("asyncthink", "4"), ("sequential", "1")] {
        let o = asyncthink(&[
            "eval",
            "--model",
            model,
            "--tasks",
            items.to_str().unwrap(),
            "--task",
            "products",
            "--mode",
            mode,
            "--capacity",
            capacity,
            "--temperature",
            "0",
            "--organizer-tokens",
            "384",
            "--worker-tokens",
            "128",
        ]);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let number = |key: &str| -> f64 {
            let at = stdout
                .find(key)
                .unwrap_or_else(|| panic!("no {key}: {stdout}"));
            stdout[at + key.len()..]
                .split(|c: char| c == ',' || c.is_whitespace())
                .find(|t| !t.is_empty())
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("{key}: {stdout}"))
        };
        assert!(number("accuracy ") >= 0.8, "{mode}: {stdout}");
        assert!(number("format-valid ") >= 0.95, "{mode}: {stdout}");
    }
}
