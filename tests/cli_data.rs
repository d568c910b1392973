//! End to end: the built binary generates items, synthesizes traces and checks answers.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_asyncthink"))
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("asyncthink-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn gen_check_and_traces() {
    let items = tmp("cd.jsonl");
    let st = bin()
        .args([
            "data",
            "gen",
            "--task",
            "countdown",
            "--n",
            "20",
            "--seed",
            "3",
            "--out",
        ])
        .arg(&items)
        .status()
        .unwrap();
    assert!(st.success());
    let text = std::fs::read_to_string(&items).unwrap();
    assert_eq!(text.lines().count(), 20);

    // Answer half right (the carried solution, wrapped in answer tags) and half wrong.
    let mut answers = String::new();
    for (k, line) in text.lines().enumerate() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let sol = v["solution"].as_str().unwrap().to_string();
        v["answer"] = if k % 2 == 0 {
            format!("thinking... <ANSWER>{sol}</ANSWER>").into()
        } else {
            "1+1".into()
        };
        answers.push_str(&v.to_string());
        answers.push('\n');
    }
    let ans = tmp("answers.jsonl");
    std::fs::write(&ans, answers).unwrap();
    let out = bin()
        .args(["data", "check", "--task", "countdown", "--input"])
        .arg(&ans)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("accuracy 0.5000 (10/20)"), "{stdout}");

    let traces = tmp("traces.jsonl");
    let out = bin()
        .args([
            "data",
            "traces",
            "--task",
            "countdown",
            "--n",
            "30",
            "--seed",
            "1",
        ])
        .args(["--mode", "asyncthink", "--capacity", "4", "--out"])
        .arg(&traces)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kept 30 (dropped 0)"), "{stderr}");
    assert!(stderr.contains("forks per trace"), "{stderr}");
    let organizer_lines = std::fs::read_to_string(&traces)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"role\":\"organizer\""))
        .count();
    assert_eq!(organizer_lines, 30);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let bad = tmp("bad.jsonl");
    std::fs::write(&bad, "{not json\n").unwrap();
    let out = bin()
        .args(["data", "check", "--task", "sudoku", "--input"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error"));
    let out = bin()
        .args(["data", "gen", "--task", "math", "--n", "1", "--out"])
        .arg(tmp("m.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = bin()
        .args(["data", "check", "--task", "math", "--input"])
        .arg(tmp("missing.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}
