//! The engine-level figures of `bench-gpu`, on a random Qwen3-0.6B-shaped model on the CUDA
//! backend: batch-1 decode against the floor of reading every weight once per token, and
//! offline throughput measured as nano-vllm's bench.py does.

use std::time::Instant;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Sizes, Timing, bench_config};
use crate::backend::Backend;
use crate::backend::cuda::CudaBackend;
use crate::engine::{Engine, EngineConfig, FinishReason, SamplingParams};
use crate::model::Qwen3;
use crate::model::random::random_checkpoint;
use crate::{Error, Result};

const BLOCK_SIZE: usize = 16;

pub struct BenchModel {
    pub model: Qwen3<CudaBackend>,
    /// Bytes of every parameter on the device (bf16), tied embeddings once.
    pub weight_bytes: usize,
    pub build_seconds: f64,
}

impl BenchModel {
    pub fn describe(&self) -> Value {
        let c = &self.model.config;
        json!({
            "weights": "random, uniform with std 0.02, norms 1 (src/model/random.rs)",
            "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim,
            "intermediate_size": c.intermediate_size,
            "vocab_size": c.vocab_size,
            "tie_word_embeddings": c.tie_word_embeddings,
            "parameters": c.num_parameters(),
            "weight_bytes": self.weight_bytes,
            "build_seconds": self.build_seconds,
        })
    }
}

/// Qwen3-0.6B's shapes with `sizes.layers` layers (and `sizes.vocab` tokens) and random bf16
/// weights, built in host memory and loaded through the ordinary checkpoint path.
pub fn build_model(be: &CudaBackend, sizes: &Sizes, seed: u64) -> Result<BenchModel> {
    let started = Instant::now();
    let config = bench_config(sizes)?;
    let ckpt = random_checkpoint(&config, seed)?;
    let model = Qwen3::from_checkpoint(be.clone(), config, &ckpt)?;
    drop(ckpt);
    let weight_bytes = model
        .parameters()
        .iter()
        .map(|(_, w)| 2 * be.weight_shape(w).iter().product::<usize>())
        .sum();
    let build_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "model: {} layers, {:.2} GB of bf16 weights, built in {build_seconds:.1} s",
        sizes.layers,
        weight_bytes as f64 / 1e9
    );
    Ok(BenchModel {
        model,
        weight_bytes,
        build_seconds,
    })
}

fn random_tokens(rng: &mut ChaCha8Rng, len: usize, vocab: u32) -> Vec<u32> {
    (0..len).map(|_| rng.random_range(0..vocab)).collect()
}

fn greedy(new_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens: new_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

/// Bytes of K and V one token occupies across every layer (bf16).
fn kv_bytes_per_token(model: &Qwen3<CudaBackend>) -> usize {
    let c = &model.config;
    2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2
}

/// One sequence, greedy: ms per generated token after the first, against the time to read
/// every weight once at the copy bandwidth.
pub fn decode_batch1(
    m: &BenchModel,
    sizes: &Sizes,
    seed: u64,
    copy_gb_s: Option<f64>,
) -> Result<Value> {
    let model = &m.model;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6465);
    let prompt = random_tokens(&mut rng, sizes.prompt_len, model.config.vocab_size as u32);
    let params = greedy(sizes.decode_tokens);
    let cfg = EngineConfig {
        num_blocks: (sizes.prompt_len + sizes.decode_tokens).div_ceil(BLOCK_SIZE) + 1,
        max_batched_tokens: sizes.prompt_len,
        max_num_seqs: 1,
        // The same prompt every repetition: each must prefill it again.
        prefix_caching: false,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(model, None, cfg)?;
    for _ in 0..sizes.warmup.max(1) {
        engine.generate(&prompt, &params, |_| {})?;
    }
    let (mut per_token, mut prefill) = (Vec::new(), Vec::new());
    for _ in 0..sizes.repeats {
        model.backend.synchronize()?;
        let out = engine.generate(&prompt, &params, |_| {})?;
        let decoded = out.token_ids.len().saturating_sub(1);
        if decoded == 0 {
            return Err(Error::InvalidInput(format!(
                "decode: {} token(s) generated, nothing to time",
                out.token_ids.len()
            )));
        }
        per_token.push(out.decode_seconds * 1e3 / decoded as f64);
        prefill.push(out.prefill_seconds * 1e3);
    }
    let t = Timing::of(&per_token, 1);
    let prefill = Timing::of(&prefill, 1);
    // Context grows from prompt_len to prompt_len + decode_tokens over the run.
    let mean_context = sizes.prompt_len + sizes.decode_tokens / 2;
    let kv_bytes = kv_bytes_per_token(model) * mean_context;
    let floor_ms = |bytes: usize| copy_gb_s.map(|bw| bytes as f64 / (bw * 1e9) * 1e3);
    let floor = floor_ms(m.weight_bytes);
    let floor_kv = floor_ms(m.weight_bytes + kv_bytes);
    let ratio = floor.map(|f| t.median_ms / f);
    eprintln!(
        "decode batch 1: {:.3} ms/token, {} the floor",
        t.median_ms,
        ratio.map_or("?".into(), |r| format!("{r:.2}x"))
    );
    Ok(json!({
        "what": "Engine::generate of one random prompt, greedy, EOS ignored; ms per token after the first",
        "prompt_len": sizes.prompt_len,
        "new_tokens": sizes.decode_tokens,
        "timing": t,
        "ms_per_token": t.median_ms,
        "tok_s": 1e3 / t.median_ms,
        "prefill_timing": prefill,
        "floor_formula": "weight_bytes / copy bandwidth (every weight read once per token)",
        "weight_bytes": m.weight_bytes,
        "floor_ms": floor,
        "ratio_to_floor": ratio,
        "target_ratio": 1.2,
        "mean_kv_bytes_read_per_token": kv_bytes,
        "floor_with_kv_ms": floor_kv,
        "ratio_to_floor_with_kv": floor_kv.map(|f| t.median_ms / f),
    }))
}

#[derive(Debug, Clone, Serialize)]
struct Run {
    seconds: f64,
    input_tokens: u64,
    output_tokens: u64,
    output_tok_s: f64,
    total_tok_s: f64,
    steps: u64,
    preemptions: u64,
    prefix_hit_tokens: u64,
    /// Time inside the model's forward and the logits' copy to the host; the rest is
    /// scheduling and sampling on the host.
    forward_seconds: f64,
    /// Sequences that ended other than at their length (must be 0 for a valid run).
    finished_early: usize,
}

/// Queues every request, steps until all finish, and drops them; returns how many ended
/// other than by length.
fn run_all(engine: &mut Engine<'_, CudaBackend>, reqs: Vec<(Vec<u32>, usize)>) -> Result<usize> {
    for (prompt, out) in reqs {
        engine.add_request(prompt, greedy(out))?;
    }
    let mut early = 0;
    while engine.has_unfinished() {
        for o in engine.step()? {
            if let Some(reason) = o.finish {
                early += usize::from(reason != FinishReason::Length);
                engine.take_finished(o.seq);
            }
        }
    }
    Ok(early)
}

/// nano-vllm's offline benchmark: `throughput_seqs` requests queued at once, input and output
/// lengths uniform in min_len..=max_len, greedy, EOS ignored. Fresh token ids each run, so
/// the prefix cache (on, as in normal use) has nothing to reuse between runs.
pub fn throughput(m: &BenchModel, sizes: &Sizes, seed: u64) -> Result<Value> {
    let model = &m.model;
    let be = &model.backend;
    let vocab = model.config.vocab_size as u32;
    let n = sizes.throughput_seqs;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7470);
    let range = sizes.min_len..=sizes.max_len;
    let lens: Vec<(usize, usize)> = (0..n)
        .map(|_| {
            (
                rng.random_range(range.clone()),
                rng.random_range(range.clone()),
            )
        })
        .collect();
    let needed: usize = lens.iter().map(|(i, o)| (i + o).div_ceil(BLOCK_SIZE)).sum();
    let mut cfg = EngineConfig {
        block_size: BLOCK_SIZE,
        max_batched_tokens: sizes.max_batched_tokens,
        max_num_seqs: n,
        ..EngineConfig::default()
    };
    let source = match sizes.kv_blocks {
        Some(b) => {
            cfg.num_blocks = b;
            "--kv-blocks"
        }
        None => {
            // The serving rule (`--gpu-memory-utilization` 0.9), capped at the need.
            cfg = cfg.with_kv_memory(model, None, 0.9)?;
            cfg.num_blocks = cfg.num_blocks.min(needed);
            "0.9 of device memory less weights and an activation reserve, capped at the need"
        }
    };
    let block_bytes = kv_bytes_per_token(model) * BLOCK_SIZE;
    let mut engine = Engine::new(model, None, cfg.clone())?;
    for _ in 0..sizes.warmup.max(1) {
        let warm = (0..n.min(4))
            .map(|_| (random_tokens(&mut rng, sizes.min_len, vocab), 4))
            .collect();
        run_all(&mut engine, warm)?;
    }
    let mut runs = Vec::new();
    for _ in 0..sizes.throughput_repeats {
        let reqs = lens
            .iter()
            .map(|&(i, o)| (random_tokens(&mut rng, i, vocab), o))
            .collect();
        let before = engine.stats.clone();
        be.synchronize()?;
        let started = Instant::now();
        let early = run_all(&mut engine, reqs)?;
        let seconds = started.elapsed().as_secs_f64();
        let s = &engine.stats;
        let (input, output) = (
            s.prompt_tokens - before.prompt_tokens,
            s.generated_tokens - before.generated_tokens,
        );
        let run = Run {
            seconds,
            input_tokens: input,
            output_tokens: output,
            output_tok_s: output as f64 / seconds,
            total_tok_s: (input + output) as f64 / seconds,
            steps: s.steps - before.steps,
            preemptions: s.preemptions - before.preemptions,
            prefix_hit_tokens: s.prefix_hit_tokens - before.prefix_hit_tokens,
            forward_seconds: s.forward_seconds - before.forward_seconds,
            finished_early: early,
        };
        eprintln!(
            "throughput: {n} sequences in {seconds:.1} s, {:.0} output tok/s, {:.0} total tok/s",
            run.output_tok_s, run.total_tok_s
        );
        runs.push(run);
    }
    let mut by_time = runs.clone();
    by_time.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let median = by_time[by_time.len() / 2].clone();
    Ok(json!({
        "what": "nano-vllm's offline benchmark: all requests queued at once, greedy, EOS ignored; \
                 wall clock from the first add_request to the last step",
        "sequences": n,
        "input_len_range": [sizes.min_len, sizes.max_len],
        "output_len_range": [sizes.min_len, sizes.max_len],
        "engine": {
            "num_blocks": cfg.num_blocks,
            "num_blocks_from": source,
            "blocks_needed_all_at_full_length": needed,
            "kv_bytes": cfg.num_blocks * block_bytes,
            "block_size": cfg.block_size,
            "max_batched_tokens": cfg.max_batched_tokens,
            "max_num_seqs": cfg.max_num_seqs,
            "chunked_prefill": cfg.chunked_prefill,
            "prefix_caching": cfg.prefix_caching,
        },
        "output_tok_s": median.output_tok_s,
        "total_tok_s": median.total_tok_s,
        "median_run": median,
        "runs": runs,
    }))
}
