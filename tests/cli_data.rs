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

/// `data gen --out` for `args`, in a fresh directory; the file's text and what else the
/// directory holds afterwards (nothing: no temporary left behind).
fn gen_in_tempdir(args: &[&str]) -> (String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("items.jsonl");
    let o = bin()
        .args(["data", "gen"])
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let others = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "items.jsonl")
        .collect();
    (std::fs::read_to_string(&out).unwrap(), others)
}

#[test]
fn gen_output_is_unchanged_by_streaming() {
    // Captured from the binary before `data gen` streamed its output.
    let (text, _) = gen_in_tempdir(&["--task", "arithmetic", "--n", "2", "--seed", "7"]);
    assert_eq!(
        text,
        concat!(
            r#"{"id":"arithmetic-s7-0000000","op":"product","operands":[13,8,15,5,12],"parts":[[13,8],[15],[5,12]],"result":"93600"}"#,
            "\n",
            r#"{"id":"arithmetic-s7-0000001","op":"sum","operands":[16,355,381,557,455],"parts":[[16],[355,381,557,455]],"result":"1764"}"#,
            "\n"
        )
    );
    let (text, _) = gen_in_tempdir(&["--task", "countdown", "--n", "2", "--seed", "7"]);
    assert_eq!(
        text,
        concat!(
            r#"{"id":"countdown-s7-0000000","numbers":[73,58,37],"target":94,"integer_only":true,"solution":"73 + 58 - 37"}"#,
            "\n",
            r#"{"id":"countdown-s7-0000001","numbers":[27,2,36],"target":18,"integer_only":true,"solution":"36 / 2"}"#,
            "\n"
        )
    );
}

#[test]
fn gen_streams_in_chunks_the_same_items_as_one_batch() {
    use asyncthink::tasks::arithmetic::Arithmetic;
    use asyncthink::tasks::{ITEM_CHUNK, generate_items};
    // Three chunks, the last one partial.
    let n = 2 * ITEM_CHUNK as usize + 7;
    let (text, others) =
        gen_in_tempdir(&["--task", "arithmetic", "--n", &n.to_string(), "--seed", "5"]);
    assert!(others.is_empty(), "left behind: {others:?}");
    let mut whole = String::new();
    for item in generate_items(&Arithmetic::default(), n, 5) {
        whole.push_str(&serde_json::to_string(&item).unwrap());
        whole.push('\n');
    }
    assert!(
        text == whole,
        "streamed output differs from the in-memory set"
    );
}

#[test]
fn traces_stream_the_same_conversations_as_one_batch() {
    use asyncthink::asyncthink::protocol::ProtocolTags;
    use asyncthink::asyncthink::traces::{TraceMode, synthesize};
    use asyncthink::tasks::ITEM_CHUNK;
    use asyncthink::tasks::arithmetic::Arithmetic;
    let n = ITEM_CHUNK as usize + 3;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("traces.jsonl");
    let o = bin()
        .args([
            "data",
            "traces",
            "--task",
            "arithmetic",
            "--mode",
            "sequential",
        ])
        .args(["--n", &n.to_string(), "--seed", "9", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (convs, stats) = synthesize(
        &Arithmetic::default(),
        n,
        9,
        TraceMode::Sequential,
        4,
        &ProtocolTags::default(),
    );
    let mut whole = String::new();
    for c in &convs {
        whole.push_str(&serde_json::to_string(c).unwrap());
        whole.push('\n');
    }
    assert!(std::fs::read_to_string(&out).unwrap() == whole);
    assert!(String::from_utf8_lossy(&o.stderr).contains(&stats.to_string()));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn gen_into_a_missing_directory_fails_cleanly() {
    let o = bin()
        .args(["data", "gen", "--task", "arithmetic", "--n", "3", "--out"])
        .arg("/nonexistent/dir/items.jsonl")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("/nonexistent/dir/items.jsonl"),
        "{err}"
    );
}
