//! The binary refuses bad flags at once, naming them, before it reads data or loads a
//! model; and the errors that do need the model (KV size, batch lines, empty task files)
//! say what is wrong instead of dumping structs.

use std::process::{Command, Output};

fn asyncthink(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_asyncthink"))
        .args(args)
        .output()
        .expect("run asyncthink")
}

/// Exit status 1, one `error: ` line naming `flag`, no panic.
fn assert_flag_error(args: &[&str], flag: &str) {
    let out = asyncthink(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    assert!(err.contains(flag), "{args:?}: {err} does not name {flag}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    // The flag is checked before anything is read: the missing files never come up.
    assert!(!err.contains("/nonexistent"), "{args:?}: {err}");
}

/// `base` + `extra`: the command with one bad flag added.
fn with(base: &[&'static str], extra: &[&'static str]) -> Vec<&'static str> {
    base.iter().chain(extra).copied().collect()
}

const MODEL: [&str; 2] = ["--model", "/nonexistent/model"];

#[test]
fn every_subcommand_names_its_bad_numeric_flag_before_doing_any_work() {
    let grpo = with(
        &[
            "grpo",
            "--tasks",
            "/nonexistent/t.jsonl",
            "--out",
            "/nonexistent/o",
        ],
        &MODEL,
    );
    let sft = with(
        &[
            "sft",
            "--data",
            "/nonexistent/d.jsonl",
            "--out",
            "/nonexistent/o",
        ],
        &MODEL,
    );
    let eval = with(
        &[
            "eval",
            "--tasks",
            "/nonexistent/t.jsonl",
            "--task",
            "arithmetic",
        ],
        &MODEL,
    );
    let generate = with(&["generate", "--prompt", "x"], &MODEL);
    let think = with(&["think", "--prompt", "x"], &MODEL);
    let batch = with(
        &[
            "batch",
            "--input",
            "/nonexistent/i.jsonl",
            "--output",
            "/nonexistent/o.jsonl",
        ],
        &MODEL,
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // The reported panic, and its neighbours.
        (with(&grpo, &["--clip-low=-1"]), "--clip-low"),
        (with(&grpo, &["--clip-low", "NaN"]), "--clip-low"),
        (with(&grpo, &["--clip-low", "1"]), "--clip-low"),
        (with(&grpo, &["--clip-high=-0.5"]), "--clip-high"),
        (with(&grpo, &["--clip-high", "inf"]), "--clip-high"),
        (with(&grpo, &["--kl-coef", "NaN"]), "--kl-coef"),
        (with(&grpo, &["--kl-coef=-0.1"]), "--kl-coef"),
        (
            with(&grpo, &["--updates-per-batch", "0"]),
            "--updates-per-batch",
        ),
        (with(&grpo, &["--group-size", "1"]), "--group-size"),
        (
            with(&grpo, &["--prompts-per-step", "0"]),
            "--prompts-per-step",
        ),
        (with(&grpo, &["--steps", "0"]), "--steps"),
        (with(&grpo, &["--lr", "0"]), "--lr"),
        (with(&grpo, &["--lr", "NaN"]), "--lr"),
        (with(&grpo, &["--tau", "0"]), "--tau"),
        (with(&grpo, &["--tau", "1.5"]), "--tau"),
        (with(&grpo, &["--lambda=-1"]), "--lambda"),
        (
            with(&grpo, &["--format-error-reward", "NaN"]),
            "--format-error-reward",
        ),
        (with(&grpo, &["--capacity", "0"]), "--capacity"),
        (with(&grpo, &["--max-steps", "0"]), "--max-steps"),
        (with(&grpo, &["--temperature", "NaN"]), "--temperature"),
        (with(&grpo, &["--kv-cache-mb", "0"]), "--kv-cache-mb"),
        (
            with(&grpo, &["--gpu-memory-utilization", "1.5"]),
            "--gpu-memory-utilization",
        ),
        (with(&grpo, &["--threads", "0"]), "--threads"),
        (
            with(&grpo, &["--max-graph-batch", "0"]),
            "--max-graph-batch",
        ),
        // eval: --samples 0 used to run as 1.
        (with(&eval, &["--samples", "0"]), "--samples"),
        (with(&eval, &["--limit", "0"]), "--limit"),
        (with(&eval, &["--temperature=-1"]), "--temperature"),
        // sft: --max-len 0 used to blame the data.
        (with(&sft, &["--max-len", "0"]), "--max-len"),
        (with(&sft, &["--max-len", "1"]), "--max-len"),
        (with(&sft, &["--lr", "NaN"]), "--lr"),
        (with(&sft, &["--batch-tokens", "0"]), "--batch-tokens"),
        (with(&sft, &["--grad-accum", "0"]), "--grad-accum"),
        (with(&sft, &["--steps", "0"]), "--steps"),
        (with(&sft, &["--weight-decay=-1"]), "--weight-decay"),
        (with(&sft, &["--max-grad-norm", "NaN"]), "--max-grad-norm"),
        // generate and batch share the sampling flags.
        (with(&generate, &["--temperature", "NaN"]), "--temperature"),
        (with(&generate, &["--top-p", "0"]), "--top-p"),
        (with(&generate, &["--min-p", "2"]), "--min-p"),
        (
            with(&generate, &["--repetition-penalty", "0"]),
            "--repetition-penalty",
        ),
        (with(&generate, &["--kv-cache-mb", "0"]), "--kv-cache-mb"),
        (
            with(&generate, &["--gpu-memory-utilization", "0"]),
            "--gpu-memory-utilization",
        ),
        (
            with(&generate, &["--gpu-memory-utilization", "NaN"]),
            "--gpu-memory-utilization",
        ),
        (with(&generate, &["--stop", ""]), "--stop"),
        (with(&["generate", "--ids", "1,x"], &MODEL), "--ids"),
        (with(&batch, &["--top-p", "1.5"]), "--top-p"),
        (with(&batch, &["--block-size", "0"]), "--block-size"),
        (with(&batch, &["--max-num-seqs", "0"]), "--max-num-seqs"),
        (
            with(&batch, &["--max-batched-tokens", "0"]),
            "--max-batched-tokens",
        ),
        (with(&["logits", "--ids", "1,x"], &MODEL), "--ids"),
        (with(&["logits", "--ids", ","], &MODEL), "--ids"),
        (with(&think, &["--capacity", "0"]), "--capacity"),
        (with(&think, &["--max-steps", "0"]), "--max-steps"),
        (with(&think, &["--temperature", "inf"]), "--temperature"),
        (with(&["bench", "--repeats", "0"], &MODEL), "--repeats"),
        (
            with(&["bench", "--new-tokens", "1"], &MODEL),
            "--new-tokens",
        ),
        (
            with(&["bench", "--prompt-len", "0"], &MODEL),
            "--prompt-len",
        ),
        (with(&["bench-batch", "--forks", "0"], &MODEL), "--forks"),
        (
            with(&["bench-batch", "--concurrency", "0"], &MODEL),
            "--concurrency",
        ),
        (
            with(&["bench-executor", "--questions", "0"], &MODEL),
            "--questions",
        ),
        (
            with(&["bench-executor", "--capacities", "1"], &MODEL),
            "--capacities",
        ),
        (with(&["demo", "--traces", "1"], &MODEL), "--traces"),
        (with(&["demo", "--sft-steps", "0"], &MODEL), "--sft-steps"),
        (
            with(&["demo", "--eval-temperature", "NaN"], &MODEL),
            "--eval-temperature",
        ),
        (with(&["demo", "--capacity", "1"], &MODEL), "--capacity"),
        (
            vec![
                "data",
                "gen",
                "--task",
                "arithmetic",
                "--n",
                "0",
                "--out",
                "/nonexistent/o",
            ],
            "--n",
        ),
        (
            vec![
                "data",
                "traces",
                "--task",
                "arithmetic",
                "--n",
                "0",
                "--out",
                "/nonexistent/o",
            ],
            "--n",
        ),
        (
            vec![
                "data",
                "traces",
                "--task",
                "arithmetic",
                "--mode",
                "sequential",
                "--capacity",
                "0",
                "--out",
                "/nonexistent/o",
            ],
            "--capacity",
        ),
    ];
    for (args, flag) in &cases {
        assert_flag_error(args, flag);
    }
}

#[test]
fn messages_give_the_value_and_the_allowed_range() {
    let out = asyncthink(&[
        "grpo",
        "--tasks",
        "/nonexistent/t.jsonl",
        "--out",
        "/nonexistent/o",
        "--clip-low=-1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "error: invalid input: --clip-low -1: must be in [0, 1)"
    );
    let out = asyncthink(&[
        "eval",
        "--tasks",
        "x",
        "--task",
        "arithmetic",
        "--samples",
        "0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "error: invalid input: --samples 0: must be at least 1"
    );
}

#[test]
fn logits_take_any_number_of_ids_including_whole_blocks() {
    // 16, 32: exactly full KV blocks, which used to be one slot short.
    for n in [1usize, 15, 16, 17, 32] {
        let ids: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
        let out = asyncthink(&["logits", "--ids", &ids.join(",")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{n} ids: {err}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["logits"].as_array().unwrap().len(), n, "{n} ids");
    }
}

#[test]
fn a_kv_cache_below_one_block_names_the_flag_and_the_block_size() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"prompt\": \"hi\"}\n").unwrap();
    let output = dir.path().join("out.jsonl");
    // A block of 2^20 positions is far more than 1 MiB for any model.
    let out = asyncthink(&[
        "batch",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--kv-cache-mb",
        "1",
        "--block-size",
        "1048576",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--kv-cache-mb 1: must be at least one block (") && err.contains("MiB"),
        "{err}"
    );
    assert!(!err.contains("EngineConfig"), "{err}");
}

#[test]
fn a_batch_line_that_is_not_an_object_says_what_a_line_must_be() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"prompt_ids\": [1, 2]}\n[2, 3]\n7\n").unwrap();
    let output = dir.path().join("out.jsonl");
    let out = asyncthink(&[
        "batch",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--max-new-tokens",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&output).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows[0].get("error").is_none(), "{}", rows[0]);
    for (row, line, got) in [(&rows[1], 2, "an array"), (&rows[2], 3, "a number")] {
        let e = row["error"].as_str().unwrap();
        assert!(e.contains(&format!("line {line}:")), "{e}");
        assert!(e.contains("must be a JSON object"), "{e}");
        assert!(e.contains("\"prompt_ids\""), "{e}");
        assert!(e.contains(got), "{e}");
    }
}

#[test]
fn eval_on_an_empty_task_file_is_an_error_not_zero_figures() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("empty.jsonl");
    std::fs::write(&tasks, "\n  \n").unwrap();
    let out = asyncthink(&[
        "eval",
        "--tasks",
        tasks.to_str().unwrap(),
        "--task",
        "arithmetic",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("nothing to evaluate"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
