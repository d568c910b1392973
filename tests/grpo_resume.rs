//! GRPO through the CLI, from a model that already writes the protocol (the demo's SFT
//! stage, tests/fixtures/models/tiny-asyncthink-sft): 4 steps straight equal 2 steps,
//! a checkpoint, and 2 resumed steps, metric for metric (timings aside).

mod common;

use std::path::Path;
use std::process::Command;

use asyncthink::tasks::arithmetic::Arithmetic;
use asyncthink::tasks::generate_items;
use common::model_dir;

fn grpo(extra: &[&str], tasks: &Path, out: &Path) {
    let model = model_dir("tiny-asyncthink-sft");
    let mut args = vec![
        "grpo",
        "--model",
        model.to_str().unwrap(),
        "--tasks",
        tasks.to_str().unwrap(),
        "--task",
        "arithmetic",
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "4",
        "--group-size",
        "4",
        "--prompts-per-step",
        "2",
        "--lr",
        "1e-3",
        "--capacity",
        "3",
        "--temperature",
        "0.7",
        "--organizer-tokens",
        "200",
        "--worker-tokens",
        "48",
        "--threads",
        "2",
    ];
    args.extend_from_slice(extra);
    let o = Command::new(env!("CARGO_BIN_EXE_asyncthink"))
        .args(&args)
        .output()
        .expect("run asyncthink");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The step logs without their wall-clock fields.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("grpo_metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let m = v.as_object_mut().unwrap();
            m.retain(|k, _| !k.contains("seconds") && !k.contains("per_second"));
            v
        })
        .collect()
}

#[test]
fn resumed_grpo_continues_the_same_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("items.jsonl");
    let items: Vec<String> = generate_items(&Arithmetic::tiny(), 8, 11)
        .iter()
        .map(|i| serde_json::to_string(i).unwrap())
        .collect();
    std::fs::write(&tasks, items.join("\n")).unwrap();

    let straight = tmp.path().join("straight");
    grpo(&["--checkpoint-every", "2"], &tasks, &straight);
    let resumed = tmp.path().join("resumed");
    let checkpoint = straight.join("checkpoint-2");
    grpo(
        &["--resume", checkpoint.to_str().unwrap()],
        &tasks,
        &resumed,
    );

    let a = metrics(&straight);
    let b = metrics(&resumed);
    assert_eq!(a.len(), 4);
    assert_eq!(b.len(), 2, "the resumed run starts at step 3");
    assert_eq!(&a[2..], &b[..]);
    // The updates must have moved the weights, or equality would prove nothing: some
    // group had different rewards (a non-zero advantage) and a gradient.
    let moved = a
        .iter()
        .any(|m| m["reward_std"].as_f64().unwrap() > 0.0 && m["grad_norm"].as_f64().unwrap() > 0.0);
    assert!(moved, "no step had a learning signal: {a:?}");
    // The final weights agree too.
    let w = |d: &Path| std::fs::read(d.join("final/model.safetensors")).unwrap();
    assert!(w(&straight) == w(&resumed), "final weights differ");

    // Resumed into the run's own directory, the steps after the checkpoint are logged once.
    grpo(
        &["--resume", checkpoint.to_str().unwrap()],
        &tasks,
        &straight,
    );
    let steps: Vec<u64> = metrics(&straight)
        .iter()
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4], "each step logged once");
}
