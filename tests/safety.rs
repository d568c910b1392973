//! Silent wrong results and lost work, through the binary: NaN weights and logits, one bad
//! request among good ones, output paths checked before the work, and training runs that
//! say what they cut, honour what they are told on resume and clean up after a kill.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::model_dir;

fn asyncthink(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_asyncthink"))
        .args(args)
        .output()
        .expect("run asyncthink")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A token whose embedding row is set to NaN in `corrupt_embedding`.
const NAN_TOKEN: usize = 77;

/// An untied fixture (so lm_head is clean and only prompts holding `NAN_TOKEN` meet NaN)
/// copied into `dir`, with that token's embedding row NaN.
fn corrupt_embedding(dir: &Path) -> PathBuf {
    let src = model_dir("tiny-mha-untied-hd");
    let dst = dir.join("nan-model");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    let (_, dtype, shape, data) = owned
        .iter_mut()
        .find(|(n, ..)| n == "model.embed_tokens.weight")
        .unwrap();
    assert_eq!(*dtype, safetensors::Dtype::F32);
    let hidden = shape[1];
    for j in 0..hidden {
        let at = (NAN_TOKEN * hidden + j) * 4;
        data[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let views: HashMap<String, safetensors::tensor::TensorView<'_>> = owned
        .iter()
        .map(|(n, d, sh, b)| {
            let v = safetensors::tensor::TensorView::new(*d, sh.clone(), b).unwrap();
            (n.clone(), v)
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(dst.join("model.safetensors"), out).unwrap();
    dst
}

#[test]
fn nan_weights_are_refused_at_load_and_nan_logits_are_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = corrupt_embedding(tmp.path());
    let o = asyncthink(&["logits", "--model", s(&model), "--ids", "1,2,3"]);
    assert!(!o.status.success(), "a NaN checkpoint loaded");
    let err = stderr(&o);
    assert!(
        err.contains("model.embed_tokens.weight") && err.contains(&format!("[{NAN_TOKEN}, 0]")),
        "{err}"
    );
    // Skipped, clean positions still work and the NaN one is an error, never `null`.
    let skip = ["logits", "--model", s(&model), "--skip-weight-check"];
    let o = asyncthink(&[&skip[..], &["--ids", "1,2,3"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let ids = format!("1,{NAN_TOKEN},3");
    let o = asyncthink(&[&skip[..], &["--ids", &ids]].concat());
    assert!(!o.status.success(), "NaN logits exited 0");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("null"));
    let err = stderr(&o);
    assert!(
        err.contains("not finite") && err.contains("position 1"),
        "{err}"
    );
}

#[test]
fn batch_gives_a_nan_request_and_a_non_utf8_line_their_own_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = corrupt_embedding(tmp.path());
    let input = tmp.path().join("in.jsonl");
    let mut text = Vec::new();
    text.extend_from_slice(b"{\"id\": \"a\", \"prompt_ids\": [1, 2, 3]}\n");
    text.extend_from_slice(
        format!("{{\"id\": \"nan\", \"prompt_ids\": [4, {NAN_TOKEN}, 5]}}\n").as_bytes(),
    );
    text.extend_from_slice(b"{\"id\": \"bad\", \"prompt\": \"\xff\xfe\"}\n");
    text.extend_from_slice(b"{\"id\": \"b\", \"prompt_ids\": [6, 7]}\n");
    std::fs::write(&input, text).unwrap();
    let output = tmp.path().join("out.jsonl");
    let o = asyncthink(&[
        "batch",
        "--model",
        s(&model),
        "--skip-weight-check",
        "--input",
        s(&input),
        "--output",
        s(&output),
        "--max-new-tokens",
        "4",
        "--ignore-eos",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    for clean in [&lines[0], &lines[3]] {
        assert!(clean.get("error").is_none(), "{clean}");
        assert_eq!(clean["token_ids"].as_array().unwrap().len(), 4, "{clean}");
    }
    let nan = lines[1]["error"].as_str().unwrap();
    assert!(nan.contains("not finite"), "{nan}");
    assert_eq!(lines[1]["finish_reason"], "error");
    let utf8 = lines[2]["error"].as_str().unwrap();
    assert!(utf8.contains("line 3") && utf8.contains("UTF-8"), "{utf8}");
}

#[test]
fn output_paths_are_checked_before_the_work() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let blocked = file.join("out.jsonl");
    let missing = tmp.path().join("missing.jsonl");
    // The input is missing too: the output is checked first, before any input is read.
    let o = asyncthink(&["batch", "--input", s(&missing), "--output", s(&blocked)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("a-file/out.jsonl"), "{}", stderr(&o));
    let o = asyncthink(&[
        "eval",
        "--task",
        "arithmetic",
        "--tasks",
        s(&missing),
        "--out",
        s(&blocked),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("a-file/out.jsonl"), "{}", stderr(&o));
    let o = asyncthink(&[
        "think",
        "--model",
        s(&missing),
        "--prompt",
        "hi",
        "--trace",
        s(&blocked),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("a-file/out.jsonl"), "{}", stderr(&o));
    // Missing parent directories are created, before the work too.
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, "{\"prompt_ids\": [1, 2]}\n").unwrap();
    let nested = tmp.path().join("new/dir/out.jsonl");
    let o = asyncthink(&[
        "batch",
        "--input",
        s(&input),
        "--output",
        s(&nested),
        "--max-new-tokens",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(nested.is_file());
}

/// A chat JSONL with one long conversation among short ones.
fn sft_data(dir: &Path) -> PathBuf {
    let path = dir.join("train.jsonl");
    let line = |q: &str, a: &str| {
        serde_json::json!({"messages": [
            {"role": "user", "content": q},
            {"role": "assistant", "content": a},
        ]})
        .to_string()
    };
    let long = "1 + 1 = 2. ".repeat(40);
    let lines = [
        line("What is 2 + 3?", "5"),
        line("What is 4 + 4?", "8"),
        line("Count.", &long),
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn sft(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let args = [
        "sft",
        "--data",
        s(data),
        "--out",
        s(out),
        "--batch-tokens",
        "64",
        "--warmup-steps",
        "1",
        "--threads",
        "2",
    ];
    asyncthink(&[&args[..], extra].concat())
}

#[test]
fn sft_says_what_it_cut_and_refuses_a_length_past_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sft_data(tmp.path());
    let out = tmp.path().join("run");
    let o = sft(&data, &out, &["--steps", "1", "--max-len", "48"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("1 of 3 conversations") && err.contains("cut"),
        "{err}"
    );
    // The embedded model's max_position_embeddings is 512.
    let o = sft(&data, &out, &["--steps", "1", "--max-len", "4096"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("max_position_embeddings"),
        "{}",
        stderr(&o)
    );
}

fn steps_logged(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn sft_resume_honours_steps_and_lr_and_logs_each_step_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sft_data(tmp.path());
    let out = tmp.path().join("run");
    let o = sft(&data, &out, &["--steps", "4", "--checkpoint-every", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(steps_logged(&out), [1, 2, 3, 4]);
    // A run killed at step 4 leaves its temporary directories behind; a pid past Linux's
    // pid_max names a process that cannot be alive.
    let dead = 4_194_999;
    for name in [
        format!(".checkpoint-6.tmp{dead}"),
        format!(".final.old{dead}"),
    ] {
        std::fs::create_dir_all(out.join(name).join("junk")).unwrap();
    }

    let ckpt = out.join("checkpoint-2");
    let resume = ["--resume", s(&ckpt), "--steps", "6", "--lr", "0.02"];
    let o = sft(&data, &out, &resume);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(steps_logged(&out), [1, 2, 3, 4, 5, 6], "each step once");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("final/trainer_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 6);
    assert_eq!(state["config"]["steps"], 6);
    assert_eq!(state["config"]["optim"]["lr"], 0.02);
    let hidden: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "stale temporaries left: {hidden:?}");

    // A target the checkpoint has already passed is refused, not ignored.
    let o = sft(&data, &out, &["--resume", s(&ckpt), "--steps", "2"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--steps 2"), "{}", stderr(&o));
}
