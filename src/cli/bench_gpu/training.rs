//! The training figures of `bench-gpu`, on the random Qwen3-0.6B-shaped model loaded for
//! training (bf16 weights, f32 masters, AdamW moments): whole optimizer steps at the
//! training sequence length, with and without activation checkpointing, and the attention
//! backward alone.
//!
//! Model FLOPs per token (the MFU convention of PaLM/nanoGPT): 6·P for the matrix products
//! (P = every weight a product reads, the output projection once) plus 6·L·H·d·(T+1) for
//! causal attention (on average (T+1)/2 keys per query; QKᵀ and PV; forward + 2× backward).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::kernels::timed;
use super::{Sizes, Timing, bench_config};
use crate::Result;
use crate::backend::cuda::CudaBackend;
use crate::backend::{AttentionShape, TrainBackend};
use crate::model::Qwen3;
use crate::model::config::Qwen3Config;
use crate::model::random::random_checkpoint;
use crate::train::optim::{AdamW, OptimConfig};
use crate::train::{Gradients, TrainBatch, loss_and_grad};

/// Most timed optimizer steps per configuration (each is long; the median is reported):
/// `--repeats` caps it lower, as the emulated GPU check does.
const MAX_STEPS: usize = 5;

/// Weights the matrix products read per token.
fn matmul_params(c: &Qwen3Config) -> usize {
    let h = c.hidden_size;
    let per_layer = h * c.q_dim() * 2 + h * c.kv_dim() * 2 + 3 * h * c.intermediate_size;
    c.num_hidden_layers * per_layer + c.vocab_size * h
}

fn flops_per_token(c: &Qwen3Config, seq_len: usize) -> f64 {
    let attn = c.num_hidden_layers * c.num_attention_heads * c.head_dim * (seq_len + 1);
    6.0 * matmul_params(c) as f64 + 6.0 * attn as f64
}

fn random_batch(seqs: usize, len: usize, vocab: usize, seed: u64) -> Result<TrainBatch> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let sequences: Vec<(Vec<u32>, Vec<f32>)> = (0..seqs)
        .map(|_| {
            let ids = (0..len)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect();
            (ids, vec![1.0; len - 1])
        })
        .collect();
    TrainBatch::pack(&sequences)
}

/// Median time of a full step (zero grads, forward + backward, AdamW) and the peak memory.
fn steps(
    be: &CudaBackend,
    model: &mut Qwen3<CudaBackend>,
    batch: &TrainBatch,
    checkpointing: bool,
    repeats: usize,
) -> Result<(Timing, u64)> {
    let mut opt = AdamW::new(
        model,
        OptimConfig {
            warmup_steps: 0,
            total_steps: (repeats + 1) as u64,
            ..OptimConfig::default()
        },
    )?;
    let mut grads = Gradients::zeros(model)?;
    be.reset_peak_memory()?;
    let norm = batch.weight_sum();
    let mut samples = Vec::with_capacity(repeats);
    for i in 0..=repeats {
        let ms = be.time_ms(|| {
            grads.zero(&model.backend)?;
            loss_and_grad(model, batch, norm, &mut grads, checkpointing)?;
            opt.step(model, &grads, 1).map(drop)
        })?;
        // The first step warms cuBLAS's heuristics and the memory pool.
        if i > 0 {
            samples.push(ms);
        }
    }
    Ok((Timing::of(&samples, 1), be.peak_memory_bytes()?))
}

pub fn training(
    be: &CudaBackend,
    sizes: &Sizes,
    seed: u64,
    gemm_tflops: Option<f64>,
) -> Result<Value> {
    let config = bench_config(sizes)?;
    let ckpt = random_checkpoint(&config, seed)?;
    let mut model =
        Qwen3::from_checkpoint_with(be.clone(), config, &ckpt, |b, t| b.load_master_weight(t))?;
    drop(ckpt);
    let c = model.config.clone();
    let (len, seqs) = (sizes.train_seq_len, sizes.train_seqs);
    let batch = random_batch(seqs, len, c.vocab_size, seed)?;
    let tokens = batch.num_tokens();
    let flops = flops_per_token(&c, len) * tokens as f64;

    let mut configs = Vec::new();
    for checkpointing in [false, true] {
        let (t, peak) = steps(
            be,
            &mut model,
            &batch,
            checkpointing,
            sizes.repeats.min(MAX_STEPS),
        )?;
        let tflops = flops / (t.median_ms * 1e-3) / 1e12;
        let mfu = gemm_tflops.map(|g| tflops / g);
        eprintln!(
            "training (checkpointing {checkpointing}): {:.0} tok/s, {tflops:.1} TFLOP/s, peak {:.2} GB",
            tokens as f64 / (t.median_ms * 1e-3),
            peak as f64 / 1e9
        );
        configs.push(json!({
            "activation_checkpointing": checkpointing,
            "step": t,
            "tokens_per_second": tokens as f64 / (t.median_ms * 1e-3),
            "model_tflop_s": tflops,
            "mfu_vs_measured_gemm": mfu,
            "peak_memory_bytes": peak,
        }));
    }

    // Without the chunked loss, the logits and their gradient would exist for every token at
    // once; this path does not exist to measure, so its extra memory is stated, not timed.
    let unfused_extra = tokens * c.vocab_size * (4 + 2);
    let chunk_bytes = tokens * 8192 * (4 + 2);

    Ok(json!({
        "what": "full optimizer steps: zero grads, forward, fused chunked cross-entropy, \
                 backward, global-norm clip, fused AdamW (bf16 weights, f32 masters/grads/moments)",
        "sequences": seqs,
        "sequence_length": len,
        "tokens_per_step": tokens,
        "flop_formula": "per token 6*P + 6*layers*heads*head_dim*(T+1), P = weights read by products (output projection once)",
        "matmul_parameters": matmul_params(&c),
        "flops_per_step": flops,
        "gemm_ceiling_tflop_s": gemm_tflops,
        "configs": configs,
        "cross_entropy_memory": {
            "fused_chunk_bytes": chunk_bytes,
            "unfused_extra_bytes_computed": unfused_extra,
            "note": "computed: f32 logits + bf16 dlogits for tokens × vocab (unfused) vs one 8192-column chunk (ours)",
        },
        "attention_backward": attention_backward(be, sizes, &c, seed)?,
    }))
}

/// The varlen attention forward and backward alone, at the training shape.
fn attention_backward(
    be: &CudaBackend,
    sizes: &Sizes,
    c: &Qwen3Config,
    seed: u64,
) -> Result<Value> {
    let shape = AttentionShape {
        num_heads: c.num_attention_heads,
        num_kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
    };
    let (len, seqs) = (sizes.train_seq_len, sizes.train_seqs);
    let rows = len * seqs;
    let bounds: Vec<usize> = (0..=seqs).map(|s| s * len).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xa77e);
    let mut rand = |cols: usize| {
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        be.tensor_from_host(&data, rows, cols)
    };
    let (qw, kw) = (
        shape.num_heads * shape.head_dim,
        shape.num_kv_heads * shape.head_dim,
    );
    let (q, k, v, d_out) = (rand(qw)?, rand(kw)?, rand(kw)?, rand(qw)?);
    let (out, lse) = be.varlen_attention(&q, &k, &v, &bounds, shape)?;
    let fwd = timed(be, sizes, 1, || {
        be.varlen_attention(&q, &k, &v, &bounds, shape).map(drop)
    })?;
    let bwd = timed(be, sizes, 1, || {
        be.varlen_attention_backward(&q, &k, &v, &out, &lse, &d_out, &bounds, shape)
            .map(drop)
    })?;
    // Causal forward: QKᵀ and PV over half the T×T scores.
    let fwd_flops = seqs as f64 * 4.0 * (len * len) as f64 / 2.0 * qw as f64;
    let bwd_flops = 2.5 * fwd_flops;
    Ok(json!({
        "what": "Backend varlen attention at the training shape (CUDA cores, kernels/attention_varlen.cu)",
        "flop_formula": "forward seqs*4*T^2/2*heads*head_dim; backward 2.5x forward (FlashAttention-2's count: 5 products vs 2)",
        "forward": fwd,
        "forward_tflop_s": fwd_flops / (fwd.median_ms * 1e-3) / 1e12,
        "backward": bwd,
        "backward_tflop_s": bwd_flops / (bwd.median_ms * 1e-3) / 1e12,
    }))
}
