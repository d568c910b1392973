//! `asyncthink bench-batch`: engine throughput against the number of concurrent
//! sequences, and the KV memory prefix sharing saves for forks of one prompt. JSON out.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use super::ModelArgs;
use super::bench::write_report;
use crate::Result;
use crate::backend::Backend;
use crate::engine::{Engine, EngineConfig, SamplingParams};
use crate::model::Qwen3;

#[derive(Args, Debug)]
pub struct BenchBatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Concurrent sequences to measure, comma-separated.
    #[arg(long, default_value = "1,4,16,64")]
    pub concurrency: String,
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Prompt length and fork count for the prefix-sharing measurement.
    #[arg(long, default_value_t = 128)]
    pub fork_prompt_len: usize,
    #[arg(long, default_value_t = 8)]
    pub forks: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn random_prompt(rng: &mut rand_chacha::ChaCha8Rng, len: usize, vocab: u32) -> Vec<u32> {
    (0..len).map(|_| rng.random_range(0..vocab)).collect()
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens: n,
        ignore_eos: true,
        ..Default::default()
    }
}

/// Blocks in use after prefilling `forks` sequences of one prompt, shared or not.
fn blocks_for_forks<B: Backend>(
    model: &Qwen3<B>,
    prompt: &[u32],
    forks: usize,
    share: bool,
) -> Result<usize> {
    let cfg = EngineConfig {
        num_blocks: forks * (prompt.len() / 16 + 2),
        max_batched_tokens: prompt.len() * forks,
        prefix_caching: false,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(model, None, cfg)?;
    let first = engine.add_request(prompt.to_vec(), greedy(2))?;
    if share {
        engine.step()?;
        for _ in 1..forks {
            engine.fork(first, None)?;
        }
    } else {
        for _ in 1..forks {
            engine.add_request(prompt.to_vec(), greedy(2))?;
        }
        engine.step()?;
    }
    Ok(engine.config().num_blocks - engine.num_free_blocks())
}

pub fn run(args: BenchBatchArgs) -> Result<()> {
    use super::validate::at_least;
    args.model.validate()?;
    let levels = super::parse_usize_list("--concurrency", &args.concurrency, 1)?;
    at_least("--prompt-len", args.prompt_len, 1)?;
    at_least("--new-tokens", args.new_tokens, 1)?;
    at_least("--fork-prompt-len", args.fork_prompt_len, 1)?;
    at_least("--forks", args.forks, 1)?;
    args.model.init_threads()?;
    let source = args.model.source();
    let (model, _) = source.load(args.model.cpu_backend())?;
    let vocab = model.config.vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);

    let mut rows = Vec::new();
    for &n in &levels {
        let per_seq_blocks = (args.prompt_len + args.new_tokens).div_ceil(16) + 1;
        let cfg = EngineConfig {
            num_blocks: n * per_seq_blocks,
            max_num_seqs: n,
            max_batched_tokens: (n * args.prompt_len).max(512),
            prefix_caching: false,
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(&model, None, cfg)?;
        let prompts: Vec<Vec<u32>> = (0..n)
            .map(|_| random_prompt(&mut rng, args.prompt_len, vocab))
            .collect();
        let started = Instant::now();
        for p in prompts {
            engine.add_request(p, greedy(args.new_tokens))?;
        }
        let mut decode_started = None;
        while engine.has_unfinished() {
            engine.step()?;
            decode_started.get_or_insert_with(Instant::now);
        }
        let total = started.elapsed().as_secs_f64();
        let decode = decode_started.map_or(total, |t| t.elapsed().as_secs_f64());
        let generated = engine.stats.generated_tokens as f64;
        rows.push(json!({
            "concurrency": n,
            "seconds": total,
            "output_tok_s": generated / total,
            // The first step prefills every prompt and samples once per sequence.
            "decode_tok_s": (generated - n as f64) / decode.max(1e-9),
            "steps": engine.stats.steps,
        }));
        eprintln!(
            "concurrency {n:3}: {:.1} tok/s out, {:.1} tok/s decode",
            generated / total,
            (generated - n as f64) / decode.max(1e-9)
        );
    }
    let base = rows[0]["output_tok_s"].as_f64().unwrap_or(1.0);
    for r in &mut rows {
        let speedup = r["output_tok_s"].as_f64().unwrap_or(0.0) / base;
        r["speedup_vs_first"] = json!(speedup);
    }

    let prompt = random_prompt(&mut rng, args.fork_prompt_len, vocab);
    let shared = blocks_for_forks(&model, &prompt, args.forks, true)?;
    let unshared = blocks_for_forks(&model, &prompt, args.forks, false)?;
    let c = &model.config;
    let block_bytes = 2 * c.num_hidden_layers * c.num_key_value_heads * 16 * c.head_dim * 4;
    eprintln!(
        "{} forks of a {}-token prompt: {shared} blocks shared vs {unshared} unshared",
        args.forks, args.fork_prompt_len
    );

    let figures = json!({
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "throughput": rows,
        "prefix_sharing": {
            "forks": args.forks,
            "prompt_len": args.fork_prompt_len,
            "blocks_shared": shared,
            "blocks_unshared": unshared,
            "bytes_shared": shared * block_bytes,
            "bytes_unshared": unshared * block_bytes,
            "saved_fraction": 1.0 - shared as f64 / unshared as f64,
        },
    });
    write_report(&source.describe(), figures, args.out.as_deref())
}
