//! How many KV blocks the engine gets: a fixed budget in bytes, or, on a device with memory of
//! its own, a fraction of that memory (vLLM's `gpu_memory_utilization`) minus what the weights
//! already hold and a reserve for one step's activations.

use super::EngineConfig;
use crate::backend::Backend;
use crate::kv::KvLayout;
use crate::model::Qwen3;
use crate::{Error, Result};

/// The KV budget when neither `--kv-cache-mb` nor device memory says otherwise (host memory).
pub const DEFAULT_HOST_KV_MB: usize = 1024;

/// Headroom for what the reserve estimate does not count: the allocator's rounding and pools,
/// cuBLAS workspaces, CUDA-graph buffers.
const SLACK_BYTES: usize = 512 << 20;

impl EngineConfig {
    /// As many blocks as `bytes` of KV memory buys for this model in the backend's cache
    /// element type.
    pub fn with_kv_budget<B: Backend>(mut self, model: &Qwen3<B>, bytes: usize) -> Self {
        let c = &model.config;
        self.num_blocks = KvLayout::blocks_for_budget(
            bytes,
            c.num_hidden_layers,
            self.block_size,
            c.num_key_value_heads,
            c.head_dim,
            model.backend.kv_element_bytes(),
        );
        self
    }

    /// `kv_cache_mb` when given; otherwise, on a backend with device memory, what
    /// `device_fraction` of it leaves once the weights (already loaded) and one step's
    /// activations are counted; otherwise what the engine can fill, capped at
    /// `DEFAULT_HOST_KV_MB`.
    pub fn with_kv_memory<B: Backend>(
        self,
        model: &Qwen3<B>,
        kv_cache_mb: Option<usize>,
        device_fraction: f32,
    ) -> Result<Self> {
        // The budget, and what set it, for the error below.
        let (bytes, given) = match (kv_cache_mb, model.backend.device_memory()) {
            (Some(mb), _) => {
                let bytes = mb
                    .checked_mul(1 << 20)
                    .ok_or_else(|| Error::InvalidInput(format!("--kv-cache-mb {mb}: too large")))?;
                (bytes, format!("--kv-cache-mb {mb}"))
            }
            (None, None) => (
                DEFAULT_HOST_KV_MB << 20,
                format!("the default KV cache (at most {DEFAULT_HOST_KV_MB} MiB)"),
            ),
            (None, Some((free, total))) => {
                let reserve = self.activation_reserve(model);
                let bytes = kv_bytes_from_fraction(free, total, device_fraction, reserve)?;
                let mib = bytes >> 20;
                let given = format!("--gpu-memory-utilization {device_fraction} ({mib} MiB of KV)");
                (bytes, given)
            }
        };
        let host_default = kv_cache_mb.is_none() && model.backend.device_memory().is_none();
        let cfg = if host_default {
            self.with_host_kv(model)
        } else {
            self.with_kv_budget(model, bytes)
        };
        if cfg.num_blocks == 0 {
            // One block's size depends on the model, so this is the first place it is known.
            let block_mib = cfg.block_bytes(model).div_ceil(1 << 20);
            return Err(Error::InvalidInput(format!(
                "{given}: must be at least one block ({block_mib} MiB for this model at \
                 --block-size {})",
                cfg.block_size
            )));
        }
        Ok(cfg)
    }

    /// Bytes of one KV block (K and V of every layer) for `model` on its backend.
    pub fn block_bytes<B: Backend>(&self, model: &Qwen3<B>) -> usize {
        let c = &model.config;
        KvLayout::block_bytes(
            c.num_hidden_layers,
            self.block_size,
            c.num_key_value_heads,
            c.head_dim,
            model.backend.kv_element_bytes(),
        )
    }

    /// Host memory: no more blocks than the engine can ever fill (every running sequence at
    /// the model's full length), and at most `DEFAULT_HOST_KV_MB`. A 100k-parameter model
    /// then takes a few MiB instead of zeroing a whole GiB on every start.
    fn with_host_kv<B: Backend>(self, model: &Qwen3<B>) -> Self {
        let capped = self.with_kv_budget(model, DEFAULT_HOST_KV_MB << 20);
        let per_seq = model
            .config
            .max_position_embeddings
            .div_ceil(capped.block_size.max(1));
        let most = capped.max_num_seqs.max(1) * per_seq;
        EngineConfig {
            num_blocks: capped.num_blocks.min(most),
            ..capped
        }
    }

    /// A generous bound on one step's live activations in bf16: the widest per-token tensors
    /// of a layer for `max_batched_tokens`, and f32 + bf16 logits for `max_num_seqs` rows.
    fn activation_reserve<B: Backend>(&self, model: &Qwen3<B>) -> usize {
        let c = &model.config;
        let per_token = 2 * c.hidden_size
            + (2 * c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
            + 3 * c.intermediate_size;
        let activations = 2 * self.max_batched_tokens * per_token * 2;
        let logits = self.max_num_seqs.max(1) * c.vocab_size * (4 + 2);
        activations + logits + SLACK_BYTES
    }
}

/// KV bytes under vLLM's rule: this process may use `fraction` of `total`; what is in use
/// already (`total − free`: weights, the context, other processes) and `reserve` come off it.
pub fn kv_bytes_from_fraction(
    free: usize,
    total: usize,
    fraction: f32,
    reserve: usize,
) -> Result<usize> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(Error::InvalidInput(format!(
            "--gpu-memory-utilization must be in (0, 1], got {fraction}"
        )));
    }
    let allowed = (total as f64 * fraction as f64) as usize;
    let in_use = total.saturating_sub(free);
    let mib = |b: usize| b >> 20;
    allowed
        .checked_sub(in_use + reserve)
        .filter(|&b| b > 0)
        .ok_or_else(|| {
            Error::KvCacheFull(format!(
                "no device memory left for the KV cache: {fraction} of {} MiB is {} MiB, \
                 {} MiB are in use (weights, other processes) and {} MiB are reserved for \
                 activations; raise --gpu-memory-utilization, lower --max-batched-tokens or \
                 --max-num-seqs, or give --kv-cache-mb",
                mib(total),
                mib(allowed),
                mib(in_use),
                mib(reserve)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: usize = 1 << 30;

    #[test]
    fn the_fraction_leaves_out_memory_in_use_and_the_reserve() {
        // 80 GiB card, 10 GiB in use, 90%: 72 − 10 − 2 = 60 GiB of KV.
        // 0.9 is not exact in f32: a few KiB either way.
        let near = |b: usize, want: usize| b.abs_diff(want) < 1 << 20;
        let b = kv_bytes_from_fraction(70 * GIB, 80 * GIB, 0.9, 2 * GIB).unwrap();
        assert!(near(b, 60 * GIB), "{b}");
        let b = kv_bytes_from_fraction(70 * GIB, 80 * GIB, 0.5, 2 * GIB).unwrap();
        assert!(near(b, 28 * GIB), "{b}");
    }

    #[test]
    fn too_little_memory_or_a_bad_fraction_is_a_clear_error() {
        let e = kv_bytes_from_fraction(GIB, 80 * GIB, 0.9, GIB).unwrap_err();
        assert!(e.to_string().contains("no device memory left"), "{e}");
        for f in [0.0, -0.5, 1.5, f32::NAN] {
            let e = kv_bytes_from_fraction(80 * GIB, 80 * GIB, f, 0).unwrap_err();
            assert!(e.to_string().contains("gpu-memory-utilization"), "{e}");
        }
    }

    /// On the host the cache holds what the engine can fill, not a fixed GiB: the tiny
    /// fixture gets max_num_seqs × 512 positions (2048 blocks of 4 KiB, 8 MiB), and an
    /// explicit --kv-cache-mb still wins.
    #[test]
    fn host_cache_is_sized_from_what_the_engine_can_fill() {
        use crate::backend::cpu::CpuBackend;
        use crate::model::ModelSource;
        let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models/tiny-gqa4-tied");
        let (model, _) = ModelSource::Dir(tiny).load(CpuBackend::default()).unwrap();
        let cfg = EngineConfig::default();
        let per_seq = model
            .config
            .max_position_embeddings
            .div_ceil(cfg.block_size);
        let sized = cfg.clone().with_kv_memory(&model, None, 0.9).unwrap();
        assert_eq!(sized.num_blocks, cfg.max_num_seqs * per_seq);
        let fixed = cfg.with_kv_memory(&model, Some(64), 0.9).unwrap();
        assert!(
            fixed.num_blocks > sized.num_blocks,
            "--kv-cache-mb 64 is honoured"
        );
    }
}
