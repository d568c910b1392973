//! Token budgets through the binary: an organizer that runs out of tokens on a JOIN ends
//! its episode as a recorded failure (the run goes on), and a zero budget is refused with
//! the flag or field it came from.

use std::path::Path;
use std::process::Command;

const SFT: &str = "tests/fixtures/models/tiny-asyncthink-sft";

fn asyncthink(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_asyncthink"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("run asyncthink")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The issue's command: the organizer's 128th token completes `<JOIN-i>` while worker i
/// still runs. It used to die with "sequence 0 has finished".
#[test]
fn think_whose_last_organizer_token_is_a_join_records_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.json");
    let out = asyncthink(&[
        "think",
        "--model",
        SFT,
        "--prompt",
        "Compute 1 + 2.",
        "--capacity",
        "3",
        "--organizer-tokens",
        "128",
        "--worker-tokens",
        "64",
        "--seed",
        "0",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("answer: (none)"), "{stdout}");
    let ep: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let errors = ep["record"]["format_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let why = errors[0].to_string();
    assert!(
        why.contains("BudgetExceeded")
            && why.contains("organizer tokens")
            && why.contains("waiting on JOIN-"),
        "{why}"
    );
    assert_eq!(ep["organizer"]["tokens"], 128);
    assert!(
        stdout.contains("format error: budget exceeded: organizer tokens"),
        "{stdout}"
    );
}

fn refused(args: &[&str], flag: &str) {
    let out = asyncthink(args);
    assert!(!out.status.success(), "{args:?} should be refused");
    let err = stderr(&out);
    assert!(err.contains(flag), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn zero_token_flags_are_refused_naming_the_flag() {
    refused(
        &["generate", "--prompt", "hi", "--max-new-tokens", "0"],
        "--max-new-tokens",
    );
    let think = |flag: &str| {
        refused(
            &["think", "--model", SFT, "--prompt", "hi", flag, "0"],
            flag,
        )
    };
    think("--organizer-tokens");
    think("--worker-tokens");
    // eval and grpo share the executor flags with think.
    refused(
        &[
            "eval",
            "--model",
            SFT,
            "--tasks",
            "nowhere.jsonl",
            "--task",
            "countdown",
            "--organizer-tokens",
            "0",
        ],
        "--organizer-tokens",
    );
}

fn batch(
    dir: &Path,
    lines: &[&str],
    extra: &[&str],
) -> (std::process::Output, Vec<serde_json::Value>) {
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let mut args = vec![
        "batch",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = asyncthink(&args);
    let results = std::fs::read_to_string(&output)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out, results)
}

#[test]
fn a_batch_line_with_zero_max_new_tokens_gets_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let (out, results) = batch(
        dir.path(),
        &[
            r#"{"id": "ok", "prompt_ids": [1, 2, 3], "sampling": {"max_new_tokens": 2, "ignore_eos": true}}"#,
            r#"{"id": "zero", "prompt_ids": [1, 2, 3], "sampling": {"max_new_tokens": 0}}"#,
            r#"{"id": "after", "prompt_ids": [4, 5], "sampling": {"max_new_tokens": 3, "ignore_eos": true}}"#,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["token_ids"].as_array().unwrap().len(), 2);
    assert_eq!(results[1]["id"], "zero");
    let err = results[1]["error"].as_str().unwrap();
    assert!(err.contains("max_new_tokens"), "{err}");
    assert!(results[1].get("token_ids").is_none(), "{:?}", results[1]);
    assert_eq!(results[2]["token_ids"].as_array().unwrap().len(), 3);

    // The default for lines without "sampling" comes from --max-new-tokens.
    let (out, _) = batch(
        dir.path(),
        &[r#"{"prompt_ids": [1]}"#],
        &["--max-new-tokens", "0"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--max-new-tokens"),
        "{}",
        stderr(&out)
    );
}
