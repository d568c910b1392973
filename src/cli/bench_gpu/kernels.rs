//! The op-level figures of `bench-gpu`: copy bandwidth and GEMM rate (the device's
//! ceilings), then paged attention in its decode and prefill shapes through
//! `Backend::attention`, each against the ceiling it should approach.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::{Sizes, Timing};
use crate::Result;
use crate::backend::cuda::{CudaBackend, CudaKvCache, CudaTensor};
use crate::backend::{AttentionShape, Backend};
use crate::kv::KvLayout;
use crate::model::checkpoint::HostTensor;
use crate::model::random::random_bf16_bytes;
use crate::model::{ForwardBatch, Logits};

/// Qwen3-0.6B's attention heads.
const SHAPE: AttentionShape = AttentionShape {
    num_heads: 16,
    num_kv_heads: 8,
    head_dim: 128,
};
const BLOCK_SIZE: usize = 16;
/// Decode-attention calls per timed repetition: back to back, so one call's host work
/// (block tables built and uploaded) overlaps the previous call's kernels, as between layers.
const DECODE_CALLS: usize = 5;

/// Per-call times of `calls` back-to-back runs of `f`, `sizes.repeats` times, after
/// `sizes.warmup` untimed runs.
pub fn timed(
    be: &CudaBackend,
    sizes: &Sizes,
    calls: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Timing> {
    for _ in 0..sizes.warmup {
        f()?;
    }
    let mut samples = Vec::with_capacity(sizes.repeats);
    for _ in 0..sizes.repeats {
        let ms = be.time_ms(|| (0..calls).try_for_each(|_| f()))?;
        samples.push(ms / calls as f64);
    }
    Ok(Timing::of(&samples, calls))
}

/// Bytes per millisecond as GB/s (10^9 bytes).
fn gb_s(bytes: usize, ms: f64) -> f64 {
    bytes as f64 / (ms * 1e-3) / 1e9
}

fn random_f32(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    random_bf16_bytes(n, seed, scale)
        .chunks_exact(2)
        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

fn random_tensor(be: &CudaBackend, rows: usize, cols: usize, seed: u64) -> Result<CudaTensor> {
    be.tensor_from_host(&random_f32(rows * cols, seed, 1.0), rows, cols)
}

pub struct Copy {
    pub gb_s: f64,
    pub report: Value,
}

/// Device-to-device copy of one large buffer into another: the bandwidth every
/// memory-bound figure is compared with.
pub fn copy(be: &CudaBackend, sizes: &Sizes) -> Result<Copy> {
    let bytes = sizes.copy_bytes;
    let samples = be.time_copy_ms(bytes, sizes.warmup, sizes.repeats)?;
    let t = Timing::of(&samples, 1);
    let rate = gb_s(2 * bytes, t.median_ms);
    eprintln!("copy: {rate:.0} GB/s (read + write)");
    Ok(Copy {
        gb_s: rate,
        report: json!({
            "what": "cuMemcpyDtoDAsync between two device buffers",
            "buffer_bytes": bytes,
            "bytes_counted": 2 * bytes,
            "counting": "bytes read + bytes written",
            "timing": t,
            "gb_s": rate,
        }),
    })
}

/// A square bf16 GEMM through the backend's `linear` (cuBLAS, f32 accumulation).
pub fn gemm(be: &CudaBackend, sizes: &Sizes) -> Result<Value> {
    let n = sizes.gemm;
    let x = random_tensor(be, n, n, 1)?;
    let w_host = random_f32(n * n, 2, 1.0);
    let w = be.load_weight(&HostTensor::from_f32_bytes(
        bytemuck::cast_slice(&w_host),
        vec![n, n],
    ))?;
    drop(w_host);
    let t = timed(be, sizes, 1, || be.linear(&x, &w).map(drop))?;
    let flops = 2.0 * (n as f64).powi(3);
    let tflops = flops / (t.median_ms * 1e-3) / 1e12;
    eprintln!("gemm {n}^3: {tflops:.0} TFLOP/s");
    Ok(json!({
        "what": "Backend::linear: y[m,n] = x[m,k] · W[n,k]ᵀ, bf16 in and out, f32 accumulation (cuBLAS)",
        "m": n, "n": n, "k": n,
        "flop_formula": "2*m*n*k",
        "flops": flops,
        "timing": t,
        "tflop_s": tflops,
    }))
}

/// `seqs` block tables of `pages` blocks each, drawn from a shuffled pool, so pages are
/// scattered through memory as after a long-running engine's allocations.
fn scattered_tables(seqs: usize, pages: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut pool: Vec<u32> = (0..(seqs * pages) as u32).collect();
    pool.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    pool.chunks(pages).map(<[u32]>::to_vec).collect()
}

/// Fills positions 0..len of every table with random keys and values.
fn fill_cache(
    be: &CudaBackend,
    cache: &mut CudaKvCache,
    tables: &[Vec<u32>],
    len: usize,
    seed: u64,
) -> Result<()> {
    let kv_dim = SHAPE.num_kv_heads * SHAPE.head_dim;
    let k = random_tensor(be, len, kv_dim, seed ^ 0x4b)?;
    let v = random_tensor(be, len, kv_dim, seed ^ 0x56)?;
    for t in tables {
        let slots: Vec<u32> = (0..len)
            .map(|p| t[p / BLOCK_SIZE] * BLOCK_SIZE as u32 + (p % BLOCK_SIZE) as u32)
            .collect();
        be.write_kv(cache, 0, &k, &v, &slots)?;
    }
    Ok(())
}

fn one_layer_cache(be: &CudaBackend, num_blocks: usize) -> Result<CudaKvCache> {
    be.alloc_kv(KvLayout {
        num_layers: 1,
        num_blocks,
        block_size: BLOCK_SIZE,
        num_kv_heads: SHAPE.num_kv_heads,
        head_dim: SHAPE.head_dim,
    })
}

fn all_finite(be: &CudaBackend, t: &CudaTensor) -> Result<bool> {
    Ok(be.to_host(t)?.iter().all(|v| v.is_finite()))
}

/// `decode_seqs` sequences each bring one token over a `decode_context`-token context:
/// the kernel must stream every sequence's K and V once, so bandwidth is its measure.
pub fn decode_attention(
    be: &CudaBackend,
    sizes: &Sizes,
    seed: u64,
    copy_gb_s: Option<f64>,
) -> Result<Value> {
    let (n, ctx) = (sizes.decode_seqs, sizes.decode_context);
    let pages = ctx.div_ceil(BLOCK_SIZE);
    let tables = scattered_tables(n, pages, seed);
    let mut cache = one_layer_cache(be, n * pages)?;
    fill_cache(be, &mut cache, &tables, ctx, seed)?;
    let q = random_tensor(be, n, SHAPE.num_heads * SHAPE.head_dim, seed ^ 0x51)?;
    let mut batch = ForwardBatch::default();
    for t in &tables {
        batch.push(&[0], ctx - 1, t, BLOCK_SIZE, Logits::Last);
    }
    let finite = all_finite(be, &be.attention(&q, &cache, 0, &batch, SHAPE)?)?;
    let t = timed(be, sizes, DECODE_CALLS, || {
        be.attention(&q, &cache, 0, &batch, SHAPE).map(drop)
    })?;
    let elem = 2; // bf16
    let kv_bytes = 2 * n * ctx * SHAPE.num_kv_heads * SHAPE.head_dim * elem;
    let q_out_bytes = 2 * n * SHAPE.num_heads * SHAPE.head_dim * elem;
    let rate = gb_s(kv_bytes + q_out_bytes, t.median_ms);
    let pct = copy_gb_s.map(|c| 100.0 * rate / c);
    eprintln!(
        "decode attention {n} x {ctx}: {rate:.0} GB/s ({} of copy)",
        pct.map_or("?".into(), |p| format!("{p:.0}%"))
    );
    Ok(json!({
        "what": "Backend::attention, every sequence one new token (the split-KV decode path)",
        "sequences": n,
        "context": ctx,
        "num_heads": SHAPE.num_heads,
        "num_kv_heads": SHAPE.num_kv_heads,
        "head_dim": SHAPE.head_dim,
        "block_size": BLOCK_SIZE,
        "block_tables": "pages drawn from a shuffled pool",
        "bytes_formula": "K and V read: 2 * seqs * context * kv_heads * head_dim * 2; \
                          q read + out written: 2 * seqs * heads * head_dim * 2",
        "kv_bytes": kv_bytes,
        "q_out_bytes": q_out_bytes,
        "timing": t,
        "gb_s": rate,
        "pct_of_copy_bandwidth": pct,
        "target_pct": 85,
        "output_finite": finite,
    }))
}

/// One sequence of `prefill_tokens` new tokens, causal: arithmetic-bound, so TFLOP/s.
pub fn prefill_attention(be: &CudaBackend, sizes: &Sizes, seed: u64) -> Result<Value> {
    let tokens = sizes.prefill_tokens;
    let pages = tokens.div_ceil(BLOCK_SIZE);
    let tables = scattered_tables(1, pages, seed);
    let mut cache = one_layer_cache(be, pages)?;
    fill_cache(be, &mut cache, &tables, tokens, seed)?;
    let q = random_tensor(be, tokens, SHAPE.num_heads * SHAPE.head_dim, seed ^ 0x51)?;
    let mut batch = ForwardBatch::default();
    batch.push(&vec![0; tokens], 0, &tables[0], BLOCK_SIZE, Logits::None);
    let finite = all_finite(be, &be.attention(&q, &cache, 0, &batch, SHAPE)?)?;
    let t = timed(be, sizes, 1, || {
        be.attention(&q, &cache, 0, &batch, SHAPE).map(drop)
    })?;
    let (tf, h, d) = (tokens as f64, SHAPE.num_heads as f64, SHAPE.head_dim as f64);
    let flops = 4.0 * tf * tf * h * d / 2.0;
    let tflops = flops / (t.median_ms * 1e-3) / 1e12;
    eprintln!("prefill attention {tokens} tokens: {tflops:.1} TFLOP/s");
    Ok(json!({
        "what": "Backend::attention, one sequence of new tokens with an empty cache before them, causal",
        "tokens": tokens,
        "num_heads": SHAPE.num_heads,
        "num_kv_heads": SHAPE.num_kv_heads,
        "head_dim": SHAPE.head_dim,
        "block_size": BLOCK_SIZE,
        "flop_formula": "4 * T * T * num_heads * head_dim / 2 (QKᵀ and PV, 2 FLOP per multiply-add, half the pairs under the causal mask)",
        "flops": flops,
        "timing": t,
        "tflop_s": tflops,
        "output_finite": finite,
    }))
}
