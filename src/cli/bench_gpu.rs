//! `asyncthink bench-gpu`: every GPU figure the project tracks, from one command, as JSON.
//! - Device ceilings: device-to-device copy bandwidth, and a large bf16 cuBLAS GEMM.
//! - Paged decode attention (many sequences, one new token each): bandwidth, and that as a
//!   share of the copy bandwidth.
//! - Paged causal prefill attention: TFLOP/s.
//! - Batch-1 decode ms/token of a random Qwen3-0.6B-shaped model through the engine, against
//!   the floor of reading every weight once per token at the copy bandwidth.
//! - Offline throughput of that model: nano-vllm's benchmark (256 sequences, input and output
//!   lengths uniform in 100..=1024, EOS ignored).
//! - Training steps of that model (bf16, f32 masters, AdamW) at sequence length 2048: tokens/s,
//!   model FLOP/s and MFU against the measured GEMM ceiling, peak memory with and without
//!   activation checkpointing, and the attention backward's TFLOP/s.
//!
//! Timings are medians of several repetitions after warm-up ones, timed with CUDA events on
//! the backend's stream after draining it (the engine figures: wall clock, each step ending
//! in a device-to-host copy of the logits). `--quick` shrinks every size for a smoke test.
//! Without a usable CUDA device it fails with `CudaBackend::new`'s reason.

#[cfg(feature = "cuda")]
mod engine;
#[cfg(feature = "cuda")]
mod kernels;
#[cfg(feature = "cuda")]
mod training;

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::{Error, Result};

#[derive(Args, Debug)]
pub struct BenchGpuArgs {
    /// Where to write the JSON report (also printed).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Shrink every size (and the model to 2 layers) for a smoke test of the command.
    #[arg(long)]
    pub quick: bool,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Decode steps replay CUDA graphs unless --enforce-eager; with graphs on, batch-1 decode
    /// is also measured eagerly, side by side.
    #[command(flatten)]
    pub graphs: super::CudaGraphArgs,
    /// Only these measurements, comma-separated: gemm, decode-attention, prefill-attention,
    /// decode, throughput, training (the copy bandwidth is always measured: the others refer to it).
    #[arg(long)]
    pub only: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Timed repetitions of each measurement; the median is reported [default: 10, quick 3].
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Untimed repetitions before them [default: 3, quick 1].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Size of each buffer of the device-to-device copy [default: 1024, quick 64].
    #[arg(long)]
    pub copy_mib: Option<usize>,
    /// m = n = k of the GEMM [default: 8192, quick 1024].
    #[arg(long)]
    pub gemm_size: Option<usize>,
    /// Sequences in the decode-attention batch [default: 64, quick 8].
    #[arg(long)]
    pub decode_seqs: Option<usize>,
    /// Context length of each of them [default: 4096, quick 512].
    #[arg(long)]
    pub decode_context: Option<usize>,
    /// New tokens of the one sequence in the prefill-attention measurement [default: 4096,
    /// quick 512].
    #[arg(long)]
    pub prefill_tokens: Option<usize>,
    /// Decoder layers of the random Qwen3-0.6B-shaped model [default: 28, quick 2].
    #[arg(long)]
    pub layers: Option<usize>,
    /// Vocabulary of the random model [default: Qwen3's 151936, quick too]. Smaller only for
    /// a smoke test where every element costs (the PTX emulator's rehearsal of the GPU check).
    #[arg(long)]
    pub vocab: Option<usize>,
    /// Prompt of the batch-1 decode [default: 128, quick 32].
    #[arg(long)]
    pub prompt_len: Option<usize>,
    /// Tokens generated per batch-1 decode repetition [default: 256, quick 16].
    #[arg(long)]
    pub decode_tokens: Option<usize>,
    /// Sequences of the offline-throughput run [default: 256, quick 8].
    #[arg(long)]
    pub throughput_seqs: Option<usize>,
    /// Shortest input and output of a throughput sequence [default: 100, quick 16].
    #[arg(long)]
    pub min_len: Option<usize>,
    /// Longest input and output of a throughput sequence [default: 1024, quick 64].
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Timed throughput runs; each is long, so one by default [default: 1].
    #[arg(long)]
    pub throughput_repeats: Option<usize>,
    /// Tokens per engine step in the throughput run [default: 16384, as nano-vllm].
    #[arg(long)]
    pub max_batched_tokens: Option<usize>,
    /// KV blocks of the throughput run [default: what free device memory holds, less a
    /// reserve, capped at what every sequence at full length needs].
    #[arg(long)]
    pub kv_blocks: Option<usize>,
    /// Tokens per training sequence [default: 2048, quick 128].
    #[arg(long)]
    pub train_seq_len: Option<usize>,
    /// Sequences per training step [default: 4, quick 2].
    #[arg(long)]
    pub train_seqs: Option<usize>,
}

/// Every size the benchmark uses, after `--quick` and the flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sizes {
    pub repeats: usize,
    pub warmup: usize,
    pub copy_bytes: usize,
    pub gemm: usize,
    pub decode_seqs: usize,
    pub decode_context: usize,
    pub prefill_tokens: usize,
    pub layers: usize,
    pub vocab: usize,
    pub prompt_len: usize,
    pub decode_tokens: usize,
    pub throughput_seqs: usize,
    pub min_len: usize,
    pub max_len: usize,
    pub throughput_repeats: usize,
    pub max_batched_tokens: usize,
    pub kv_blocks: Option<usize>,
    pub train_seq_len: usize,
    pub train_seqs: usize,
}

impl Sizes {
    pub fn resolve(a: &BenchGpuArgs) -> Result<Sizes> {
        let pick = |flag: Option<usize>, full: usize, quick: usize| {
            flag.unwrap_or(if a.quick { quick } else { full })
        };
        let s = Sizes {
            repeats: pick(a.repeats, 10, 3),
            warmup: pick(a.warmup, 3, 1),
            copy_bytes: pick(a.copy_mib, 1024, 64) << 20,
            gemm: pick(a.gemm_size, 8192, 1024),
            decode_seqs: pick(a.decode_seqs, 64, 8),
            decode_context: pick(a.decode_context, 4096, 512),
            prefill_tokens: pick(a.prefill_tokens, 4096, 512),
            layers: pick(a.layers, 28, 2),
            vocab: pick(a.vocab, 151_936, 151_936),
            prompt_len: pick(a.prompt_len, 128, 32),
            decode_tokens: pick(a.decode_tokens, 256, 16),
            throughput_seqs: pick(a.throughput_seqs, 256, 8),
            min_len: pick(a.min_len, 100, 16),
            max_len: pick(a.max_len, 1024, 64),
            throughput_repeats: pick(a.throughput_repeats, 1, 1),
            max_batched_tokens: pick(a.max_batched_tokens, 16384, 16384),
            kv_blocks: a.kv_blocks,
            train_seq_len: pick(a.train_seq_len, 2048, 128),
            train_seqs: pick(a.train_seqs, 4, 2),
        };
        use super::validate::{at_least, at_least_opt, ordered};
        let positive = [
            ("--repeats", s.repeats),
            ("--copy-mib", s.copy_bytes >> 20),
            ("--gemm-size", s.gemm),
            ("--decode-seqs", s.decode_seqs),
            ("--decode-context", s.decode_context),
            ("--prefill-tokens", s.prefill_tokens),
            ("--layers", s.layers),
            ("--vocab", s.vocab),
            ("--prompt-len", s.prompt_len),
            ("--throughput-seqs", s.throughput_seqs),
            ("--min-len", s.min_len),
            ("--throughput-repeats", s.throughput_repeats),
            ("--max-batched-tokens", s.max_batched_tokens),
            ("--train-seq-len", s.train_seq_len),
            ("--train-seqs", s.train_seqs),
        ];
        for (flag, v) in positive {
            at_least(flag, v, 1)?;
        }
        at_least_opt("--kv-blocks", s.kv_blocks, 1)?;
        // The first decode token comes from the prefill.
        at_least("--decode-tokens", s.decode_tokens, 2)?;
        ordered("--min-len", s.min_len, "--max-len", s.max_len)?;
        a.graphs.validate()?;
        Ok(s)
    }
}

/// The benchmarks' model: Qwen3-0.6B's shapes, `sizes.layers` layers, `sizes.vocab` tokens.
#[cfg(feature = "cuda")]
fn bench_config(sizes: &Sizes) -> Result<crate::model::config::Qwen3Config> {
    let mut c = crate::model::random::qwen3_0p6b_config(sizes.layers)?;
    c.vocab_size = sizes.vocab;
    Ok(c)
}

/// The measurements `--only` can pick.
pub const PARTS: [&str; 6] = [
    "gemm",
    "decode-attention",
    "prefill-attention",
    "decode",
    "throughput",
    "training",
];

/// `--only`'s list, checked against `PARTS`; every part when absent.
pub fn parse_only(only: Option<&str>) -> Result<Vec<&'static str>> {
    let Some(list) = only else {
        return Ok(PARTS.to_vec());
    };
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            PARTS.iter().copied().find(|&k| k == p).ok_or_else(|| {
                Error::InvalidInput(format!("--only: unknown part {p:?} (one of {PARTS:?})"))
            })
        })
        .collect()
}

/// Summary of repeated timings of one measurement.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub repeats: usize,
    /// Back-to-back calls inside each timed repetition; the times are per call.
    pub calls_per_repeat: usize,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
impl Timing {
    /// `samples` are per-call milliseconds, one per repetition (at least one).
    pub fn of(samples: &[f64], calls_per_repeat: usize) -> Timing {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Timing {
            median_ms: median,
            min_ms: s.first().copied().unwrap_or(f64::NAN),
            max_ms: s.last().copied().unwrap_or(f64::NAN),
            repeats: n,
            calls_per_repeat,
        }
    }
}

/// The NVIDIA kernel-module version from /proc/driver/nvidia/version's first line
/// ("NVRM version: NVIDIA UNIX ... Kernel Module  580.65.06  ...").
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub fn parse_nvidia_version(text: &str) -> Option<String> {
    text.lines()
        .next()?
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('.'))
        .map(str::to_string)
}

pub fn run(args: BenchGpuArgs) -> Result<()> {
    let sizes = Sizes::resolve(&args)?;
    let parts = parse_only(args.only.as_deref())?;
    measure(&args, &sizes, &parts)
}

#[cfg(not(feature = "cuda"))]
fn measure(_: &BenchGpuArgs, _: &Sizes, _: &[&str]) -> Result<()> {
    Err(Error::InvalidInput(
        "bench-gpu: this binary was built without the `cuda` feature".into(),
    ))
}

#[cfg(feature = "cuda")]
fn measure(args: &BenchGpuArgs, sizes: &Sizes, parts: &[&str]) -> Result<()> {
    use serde_json::{Value, json};

    use crate::backend::cuda::CudaBackend;

    let be = CudaBackend::new(args.device).map_err(|e| {
        let reason = match e {
            Error::Backend { msg, .. } => msg,
            other => other.to_string(),
        };
        Error::Backend {
            backend: "cuda",
            msg: format!("bench-gpu needs a CUDA device, and none could be opened: {reason}"),
        }
    })?;
    args.graphs.apply(&be);
    let device = device_facts(&be)?;
    eprintln!("bench-gpu on {}", device["name"]);
    let mut failures = Vec::new();
    let mut record = |name: &str, r: Result<Value>| -> Value {
        r.unwrap_or_else(|e| {
            eprintln!("{name}: failed: {e}");
            failures.push(format!("{name}: {e}"));
            json!({ "error": e.to_string() })
        })
    };

    let copy = kernels::copy(&be, sizes);
    let copy_gbs = copy.as_ref().ok().map(|c| c.gb_s);
    let copy = record("copy", copy.map(|c| c.report));
    let mut figures = json!({
        "backend": "cuda",
        "machine": device_line(&device),
        "host": super::bench::machine_description(),
        "date": crate::util::utc_now(),
        "device": device,
        "quick": args.quick,
        "seed": args.seed,
        "sizes": sizes,
        "method": "each timing is the median of `repeats` timed repetitions after `warmup` \
                   untimed ones; kernel figures are device time between CUDA events recorded \
                   on the backend's stream after draining it (host work inside the calls, such \
                   as building and uploading block tables, counted); engine figures are wall \
                   clock, each engine step ending in a device-to-host copy of the logits",
        "ceilings": { "copy": copy },
    });
    let wanted = |p: &str| parts.contains(&p);
    let mut gemm_tflops = None;
    if wanted("gemm") {
        let g = kernels::gemm(&be, sizes);
        gemm_tflops = g.as_ref().ok().and_then(|v| v["tflop_s"].as_f64());
        figures["ceilings"]["gemm"] = record("gemm", g);
    }
    if wanted("decode-attention") {
        let r = kernels::decode_attention(&be, sizes, args.seed, copy_gbs);
        figures["decode_attention"] = record("decode-attention", r);
    }
    if wanted("prefill-attention") {
        let r = kernels::prefill_attention(&be, sizes, args.seed);
        figures["prefill_attention"] = record("prefill-attention", r);
    }
    if wanted("decode") || wanted("throughput") {
        match engine::build_model(&be, sizes, args.seed) {
            Ok(m) => {
                figures["model_shape"] = m.describe();
                if wanted("decode") {
                    let r = engine::decode_batch1(&m, sizes, args.seed, copy_gbs);
                    figures["decode_batch1"] = record("decode", r);
                    if !args.graphs.enforce_eager {
                        use crate::backend::cuda::GraphMode;
                        be.set_cuda_graphs(GraphMode::Eager, args.graphs.max_graph_batch);
                        let r = engine::decode_batch1(&m, sizes, args.seed, copy_gbs);
                        args.graphs.apply(&be);
                        figures["decode_batch1_eager"] = record("decode (eager)", r);
                        let ms = |k: &str| figures[k]["ms_per_token"].as_f64();
                        if let (Some(g), Some(e)) = (ms("decode_batch1"), ms("decode_batch1_eager"))
                        {
                            eprintln!("decode batch 1: CUDA graphs {:.2}x eager", e / g);
                            figures["decode_graph_speedup"] = json!(e / g);
                        }
                    }
                }
                if wanted("throughput") {
                    let r = engine::throughput(&m, sizes, args.seed);
                    figures["throughput"] = record("throughput", r);
                }
            }
            Err(e) => figures["model_shape"] = record("model", Err(e)),
        }
    }
    if wanted("training") {
        let r = training::training(&be, sizes, args.seed, gemm_tflops);
        figures["training"] = record("training", r);
    }

    figures["cuda_graphs"] = json!({
        "mode": format!("{:?}", be.graph_mode()),
        "max_batch": args.graphs.max_graph_batch,
        "stats": be.graph_stats(),
    });
    let model = format!(
        "random weights, Qwen3-0.6B shape, {} layers (bf16)",
        sizes.layers
    );
    super::bench::write_report(&model, figures, args.out.as_deref())?;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Backend {
            backend: "cuda",
            msg: format!(
                "bench-gpu: {} measurement(s) failed (recorded in the report): {}",
                failures.len(),
                failures.join("; ")
            ),
        })
    }
}

/// Name, architecture, memory and driver of the device, for the report.
#[cfg(feature = "cuda")]
fn device_facts(be: &crate::backend::cuda::CudaBackend) -> Result<serde_json::Value> {
    let (free, total) = be.memory_info()?;
    let (major, minor) = be.driver_cuda_version()?;
    let nvidia = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|t| parse_nvidia_version(&t));
    Ok(serde_json::json!({
        "name": be.device_name()?,
        "arch": be.arch(),
        "sm_count": be.sm_count(),
        "memory_total_bytes": total,
        "memory_free_bytes_at_start": free,
        "driver_cuda_version": format!("{major}.{minor}"),
        "nvidia_driver": nvidia,
    }))
}

#[cfg(feature = "cuda")]
fn device_line(d: &serde_json::Value) -> String {
    let name = d["name"].as_str().unwrap_or("unknown GPU");
    let cuda = d["driver_cuda_version"].as_str().unwrap_or("?");
    match d["nvidia_driver"].as_str() {
        Some(v) => format!("{name}, driver {v} (CUDA {cuda})"),
        None => format!("{name}, driver CUDA {cuda}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        a: BenchGpuArgs,
    }

    fn sizes(argv: &[&str]) -> Result<Sizes> {
        let w = Wrap::try_parse_from(std::iter::once("x").chain(argv.iter().copied())).unwrap();
        Sizes::resolve(&w.a)
    }

    #[test]
    fn quick_shrinks_every_size_and_flags_override_both() {
        let full = sizes(&[]).unwrap();
        let quick = sizes(&["--quick"]).unwrap();
        assert_eq!((full.gemm, full.decode_seqs, full.layers), (8192, 64, 28));
        assert_eq!(full.copy_bytes, 1 << 30);
        assert!(quick.gemm < full.gemm && quick.copy_bytes < full.copy_bytes);
        assert!(quick.decode_context < full.decode_context);
        assert!(quick.prefill_tokens < full.prefill_tokens && quick.layers < full.layers);
        assert!(quick.throughput_seqs < full.throughput_seqs && quick.max_len < full.max_len);
        let o = sizes(&["--quick", "--gemm-size", "4096", "--layers", "5"]).unwrap();
        assert_eq!(
            (o.gemm, o.layers, o.decode_seqs),
            (4096, 5, quick.decode_seqs)
        );
    }

    #[test]
    fn bad_sizes_are_refused_by_flag_name() {
        let err = |a: &[&str]| sizes(a).unwrap_err().to_string();
        assert!(err(&["--repeats", "0"]).contains("--repeats"));
        assert!(err(&["--decode-tokens", "1"]).contains("--decode-tokens"));
        assert!(err(&["--min-len", "50", "--max-len", "10"]).contains("--min-len"));
        assert!(err(&["--kv-blocks", "0"]).contains("--kv-blocks"));
    }

    #[test]
    fn only_lists_known_parts() {
        assert_eq!(parse_only(None).unwrap(), PARTS.to_vec());
        assert_eq!(
            parse_only(Some("decode, gemm")).unwrap(),
            vec!["decode", "gemm"]
        );
        assert!(parse_only(Some("gemm,copy")).is_err());
    }

    #[test]
    fn timing_median_min_max() {
        let t = Timing::of(&[3.0, 1.0, 2.0], 5);
        assert_eq!((t.median_ms, t.min_ms, t.max_ms), (2.0, 1.0, 3.0));
        assert_eq!((t.repeats, t.calls_per_repeat), (3, 5));
        assert_eq!(Timing::of(&[4.0, 1.0, 2.0, 3.0], 1).median_ms, 2.5);
    }

    #[test]
    fn nvidia_driver_version_from_proc() {
        let proprietary = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 07:09:11 UTC 2025\nGCC version: gcc 12";
        let open =
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.133.20  Release Build";
        assert_eq!(
            parse_nvidia_version(proprietary).as_deref(),
            Some("580.65.06")
        );
        assert_eq!(parse_nvidia_version(open).as_deref(), Some("570.133.20"));
        assert_eq!(parse_nvidia_version(""), None);
    }
}
