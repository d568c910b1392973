//! `asyncthink bench-gpu` end to end. Without a usable GPU it must fail with the reason
//! `CudaBackend::new` gives, exit status 1 and no panic; with one, `--quick` must finish and
//! write a report holding every figure. The test asks `CudaBackend::new` itself which case
//! this machine is, so a GPU machine cannot pass through the failure branch.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn bench_gpu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_asyncthink"))
        .arg("bench-gpu")
        .args(args)
        .output()
        .expect("run asyncthink")
}

/// None when a GPU is usable; otherwise the message the command must repeat.
fn no_gpu_reason() -> Option<String> {
    #[cfg(feature = "cuda")]
    {
        use asyncthink::backend::cuda::probe;
        match asyncthink::backend::cuda::CudaBackend::new(0) {
            Ok(_) => None,
            Err(e) if probe::gpu_required() => {
                panic!("no GPU under {}=1: {e}", probe::REQUIRE_GPU_ENV)
            }
            Err(asyncthink::Error::Backend { msg, .. }) => Some(msg),
            Err(e) => Some(e.to_string()),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        Some("built without the `cuda` feature".to_string())
    }
}

fn positive(v: &Value, path: &[&str]) -> f64 {
    let x = path
        .iter()
        .fold(v, |v, k| &v[*k])
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v:#}"));
    assert!(x.is_finite() && x > 0.0, "{path:?} = {x}");
    x
}

fn check_report(path: &Path) {
    let v: Value = serde_json::from_slice(&std::fs::read(path).expect("report written"))
        .expect("report is JSON");
    assert_eq!(v["backend"], "cuda");
    assert!(v["device"]["name"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(v["date"].as_str().is_some_and(|d| d.ends_with('Z')));
    assert!(v["commit"].is_string());
    let copy = positive(&v, &["ceilings", "copy", "gb_s"]);
    positive(&v, &["ceilings", "gemm", "tflop_s"]);
    let attn = positive(&v, &["decode_attention", "gb_s"]);
    let pct = positive(&v, &["decode_attention", "pct_of_copy_bandwidth"]);
    assert!((pct - 100.0 * attn / copy).abs() < 1e-6 * pct);
    positive(&v, &["prefill_attention", "tflop_s"]);
    assert!(v["prefill_attention"]["flop_formula"].is_string());
    assert_eq!(v["decode_attention"]["output_finite"], true);
    assert_eq!(v["prefill_attention"]["output_finite"], true);
    positive(&v, &["decode_batch1", "ms_per_token"]);
    positive(&v, &["decode_batch1", "ratio_to_floor"]);
    let out = positive(&v, &["throughput", "output_tok_s"]);
    assert!(positive(&v, &["throughput", "total_tok_s"]) > out);
    assert_eq!(v["throughput"]["median_run"]["finished_early"], 0);
    assert_eq!(v["training"]["measured"], false);
}

#[test]
fn bench_gpu_fails_cleanly_without_a_gpu_and_reports_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("bench-gpu.json");
    let out = bench_gpu(&["--quick", "--out", report.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    match no_gpu_reason() {
        None => {
            assert!(out.status.success(), "{stderr}");
            check_report(&report);
        }
        Some(reason) => {
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(stderr.starts_with("error: "), "{stderr}");
            assert!(stderr.contains(&reason), "{stderr} lacks {reason:?}");
            assert!(!report.exists(), "no report without a GPU");
        }
    }
}

#[test]
fn bench_gpu_refuses_bad_sizes_before_touching_a_device() {
    for args in [
        vec!["--repeats", "0"],
        vec!["--min-len", "9", "--max-len", "3"],
        vec!["--only", "gemm,bogus"],
    ] {
        let out = bench_gpu(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: invalid input"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
