//! `asyncthink bench`: prefill tokens/s over a random prompt, then batch-1 greedy decode
//! tokens/s, written as JSON so runs (and other engines) can be compared.

use std::path::PathBuf;

use clap::Args;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use super::ModelArgs;
use crate::engine::{Engine, EngineConfig, SamplingParams};
use crate::{Error, Result};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Timed repetitions; the best is reported (least disturbed by the machine).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the JSON report (also printed).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    use super::validate::at_least;
    args.model.validate()?;
    at_least("--prompt-len", args.prompt_len, 1)?;
    // The first new token comes from the prefill: decode speed needs a second.
    at_least("--new-tokens", args.new_tokens, 2)?;
    at_least("--repeats", args.repeats, 1)?;
    args.model.init_threads()?;
    let source = args.model.source();
    let load_start = std::time::Instant::now();
    let (model, _tokenizer) = source.load(args.model.cpu_backend())?;
    let load_seconds = load_start.elapsed().as_secs_f64();

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let vocab = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..args.prompt_len)
        .map(|_| rng.random_range(0..vocab))
        .collect();
    let params = SamplingParams {
        max_new_tokens: args.new_tokens,
        ignore_eos: true,
        ..Default::default()
    };
    let defaults = EngineConfig::default();
    let cfg = EngineConfig {
        // The last new token is sampled, never written: prompt + new − 1 positions fit.
        num_blocks: (args.prompt_len + args.new_tokens).div_ceil(defaults.block_size),
        // The whole prompt in one forward, as transformers' prefill does.
        max_batched_tokens: args.prompt_len,
        prefix_caching: false,
        ..defaults
    };
    let mut engine = Engine::new(&model, None, cfg)?;
    // Warm-up: page in the weights and grow the thread pool.
    let warmup = SamplingParams {
        max_new_tokens: 2,
        ..params.clone()
    };
    engine.generate(&prompt, &warmup, |_| {})?;

    let mut best_prefill = 0f64;
    let mut best_decode = 0f64;
    for _ in 0..args.repeats {
        let out = engine.generate(&prompt, &params, |_| {})?;
        best_prefill = best_prefill.max(out.prefill_tokens_per_second());
        best_decode = best_decode.max(out.decode_tokens_per_second());
    }
    let report = json!({
        "engine": "asyncthink",
        "backend": "cpu",
        "version": env!("CARGO_PKG_VERSION"),
        "commit": option_env!("ASYNCTHINK_COMMIT").unwrap_or("unknown"),
        "model": source.describe(),
        "weights_dtype": model.config.dtype.map(|d| d.hf_name()),
        "threads": rayon::current_num_threads(),
        "precision": args.model.precision.name(),
        "bf16_kernel": (args.model.precision == crate::backend::cpu::Precision::Bf16)
            .then(|| crate::backend::cpu::bf16_linear::Bf16Kernel::best().name()),
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "load_seconds": load_seconds,
        "prefill_tok_s": best_prefill,
        "decode_tok_s": best_decode,
        "machine": machine_description(),
    });
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.out {
        std::fs::write(path, &text).map_err(|e| Error::io(path, e))?;
    }
    println!("{text}");
    Ok(())
}

/// Writes a benchmark report: what every report says about where it was measured
/// (engine, commit, model, machine, threads) followed by `figures`; printed, and written
/// to `out` when given.
pub fn write_report(
    model: &str,
    figures: serde_json::Value,
    out: Option<&std::path::Path>,
) -> crate::Result<()> {
    let mut report = serde_json::json!({
        "engine": "asyncthink",
        "backend": "cpu",
        "commit": option_env!("ASYNCTHINK_COMMIT").unwrap_or("unknown"),
        "model": model,
        "machine": machine_description(),
        "threads": rayon::current_num_threads(),
    });
    if let (Some(all), serde_json::Value::Object(more)) = (report.as_object_mut(), figures) {
        all.extend(more);
    }
    let text = serde_json::to_string_pretty(&report)?;
    // With --out the report goes to the file and one line says where; without it, stdout is
    // the report.
    match out {
        Some(path) => {
            crate::util::write_atomic(path, text.as_bytes())?;
            eprintln!("wrote the report to {}", path.display());
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// CPU model name, core count and the vector units the kernels choose between, so a JSON
/// report says what it was measured on (machines of one kind differ in these).
pub fn machine_description() -> String {
    let flags = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        })
        .unwrap_or_default();
    let units: Vec<&str> = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"]
        .into_iter()
        .filter(|u| flags.iter().any(|f| f == u))
        .collect();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores, {}", units.join(" "))
}
