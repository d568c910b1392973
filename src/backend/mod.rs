//! The operations the Qwen3 model is written in. The model (`model::Qwen3`) is generic
//! over this trait, so the CPU reference and the CUDA backend run the same model code.
//!
//! Tensors are 2-D `[rows, cols]` activations, one row per token of the flattened batch.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod decode_graph;

use crate::Result;
pub use crate::engine::sampling::{Chosen, NonFinite, RowChoice, TokenChoice};
use crate::kv::KvLayout;
use crate::model::batch::ForwardBatch;
use crate::model::checkpoint::HostTensor;
use crate::model::rope::Rope;

/// Head geometry of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// What a backend may need to run a whole forward step its own way instead of op by op
/// (the CUDA backend replays captured graphs of pure-decode steps; docs/kernels.md).
pub struct StepContext<'a, W> {
    /// Every parameter the forward reads. A captured graph holds their device addresses: a
    /// step whose weights sit elsewhere (a reallocated weight, another model) never replays
    /// it. In-place updates (AdamW re-rounding `data`) keep the addresses, and a replay reads
    /// the new values.
    pub weights: Vec<&'a W>,
    /// A hash of everything else baked into launches (config, RoPE frequencies).
    pub model_key: u64,
    /// The longest context a sequence may reach (max_position_embeddings).
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub attention: AttentionShape,
    /// RoPE's inverse frequencies (the model keeps them on the host).
    pub rope_inv_freq: &'a [f32],
}

/// The model's own forward, op by op, as handed to [`Backend::forward_step`].
pub type EagerForward<'f, B> =
    dyn FnMut(&ForwardBatch, &mut <B as Backend>::KvCache) -> Result<<B as Backend>::Tensor> + 'f;

pub trait Backend: Send + Sync {
    type Tensor: Send + Sync;
    type Weight: Send + Sync;
    type KvCache: Send + Sync;

    fn name(&self) -> &'static str;

    /// Takes a parameter from a mapped checkpoint into the backend's storage.
    fn load_weight(&self, t: &HostTensor<'_>) -> Result<Self::Weight>;
    fn alloc_kv(&self, layout: KvLayout) -> Result<Self::KvCache>;
    fn weight_shape(&self, w: &Self::Weight) -> Vec<usize>;

    /// Rows of `table` (a `[vocab, hidden]` weight) for each id.
    fn embedding(&self, table: &Self::Weight, ids: &[u32]) -> Result<Self::Tensor>;
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Weight, eps: f32) -> Result<Self::Tensor>;
    /// `residual += delta`, then returns `rms_norm(residual)`: the pre-norm block seam.
    fn add_rms_norm(
        &self,
        residual: &mut Self::Tensor,
        delta: &Self::Tensor,
        weight: &Self::Weight,
        eps: f32,
    ) -> Result<Self::Tensor>;
    fn add_assign(&self, residual: &mut Self::Tensor, delta: &Self::Tensor) -> Result<()>;
    /// `x · Wᵀ` for W stored `[out, in]`.
    fn linear(&self, x: &Self::Tensor, weight: &Self::Weight) -> Result<Self::Tensor>;
    /// Qwen3's per-head RMSNorm of q and k, then RoPE at each row's position, in place.
    #[allow(clippy::too_many_arguments)]
    fn qk_norm_rope(
        &self,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        q_norm: &Self::Weight,
        k_norm: &Self::Weight,
        shape: AttentionShape,
        eps: f32,
        rope: &Rope,
        positions: &[u32],
    ) -> Result<()>;
    /// Stores each row's k and v at its slot of `layer`'s pools.
    fn write_kv(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        k: &Self::Tensor,
        v: &Self::Tensor,
        slot_mapping: &[u32],
    ) -> Result<()>;
    /// `qk_norm_rope`, then `write_kv` of the transformed k and v at the batch's slots.
    /// Backends may fuse the two (CUDA writes k straight into the cache).
    #[allow(clippy::too_many_arguments)]
    fn qk_norm_rope_write_kv(
        &self,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        v: &Self::Tensor,
        q_norm: &Self::Weight,
        k_norm: &Self::Weight,
        shape: AttentionShape,
        eps: f32,
        rope: &Rope,
        batch: &ForwardBatch,
        cache: &mut Self::KvCache,
        layer: usize,
    ) -> Result<()> {
        self.qk_norm_rope(q, k, q_norm, k_norm, shape, eps, rope, &batch.positions)?;
        self.write_kv(cache, layer, k, v, &batch.slot_mapping)
    }
    /// Copies block `src` to block `dst` in every layer's K and V pools
    /// (copy-on-write of a partly filled block shared after a fork).
    fn copy_block(&self, cache: &mut Self::KvCache, src: u32, dst: u32) -> Result<()>;
    /// Causal GQA attention of each sequence's new queries over its cached keys/values.
    fn attention(
        &self,
        q: &Self::Tensor,
        cache: &Self::KvCache,
        layer: usize,
        batch: &ForwardBatch,
        shape: AttentionShape,
    ) -> Result<Self::Tensor>;
    /// `silu(gate) * up`.
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;
    /// The listed rows, in order.
    fn gather_rows(&self, x: &Self::Tensor, rows: &[u32]) -> Result<Self::Tensor>;
    fn to_host(&self, x: &Self::Tensor) -> Result<Vec<f32>>;
    /// Runs one forward step: by default `eager(batch, kv)`. A backend may instead run a
    /// padded copy of `batch` through `eager` and replay it later (CUDA graphs); it must
    /// return logits `[batch.logits_rows.len(), vocab]` for `batch` itself.
    fn forward_step(
        &self,
        batch: &ForwardBatch,
        kv: &mut Self::KvCache,
        ctx: &StepContext<'_, Self::Weight>,
        eager: &mut EagerForward<'_, Self>,
    ) -> Result<Self::Tensor>
    where
        Self: Sized,
    {
        let _ = ctx;
        eager(batch, kv)
    }
    /// The next token of each row of final logits (`rows[r]` settings for row r) and its
    /// log-prob under the raw logits: a forced token is kept, otherwise repetition penalty,
    /// then greedy or the seeded draw `counter_uniform(seed, step)`. A row with a NaN or an
    /// infinity is `NonFinite` on its own; the other rows are chosen as usual. The default copies the logits to the host and applies
    /// `engine::sampling::select_on_host`; a device backend overrides it so only ids and
    /// log-probs leave the device, picking the same tokens.
    fn select_tokens(
        &self,
        logits: &Self::Tensor,
        rows: &[TokenChoice<'_>],
    ) -> Result<Vec<RowChoice>> {
        let host = self.to_host(logits)?;
        crate::engine::sampling::select_on_host(&host, rows)
    }
    /// (free, total) bytes of the backend's own device memory; the CPU has none (its memory
    /// is the process's, managed by the OS).
    fn device_memory(&self) -> Option<(usize, usize)> {
        None
    }
    /// Bytes of device memory in use (total − free), where the backend has a device.
    fn device_memory_used(&self) -> Option<u64> {
        self.device_memory()
            .map(|(free, total)| total.saturating_sub(free) as u64)
    }
    /// Bytes per element of this backend's KV cache.
    fn kv_element_bytes(&self) -> usize {
        std::mem::size_of::<f32>()
    }
}

/// AdamW hyperparameters of one step (the learning rate already scheduled).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Multiplies every gradient first (global-norm clipping, accumulation averaging).
    pub grad_scale: f32,
    /// 1-based step count, for bias correction.
    pub step: u64,
}

/// The backward half of every op the model uses, plus the optimizer, so training is
/// written once over backends like inference is.
pub trait TrainBackend: Backend + Clone {
    /// An f32 gradient buffer shaped like a weight.
    type Grad: Send + Sync;
    /// AdamW moments of one weight.
    type OptState: Send + Sync;
    /// Per-(row, head) f32 statistics (attention's log-sum-exp), kept in full precision
    /// whatever the activations' dtype: the backward recomputes exp(s − L) from it.
    type Stats: Send + Sync;

    /// A parameter in the precision training updates (f32 master weights).
    fn load_master_weight(&self, t: &HostTensor<'_>) -> Result<Self::Weight>;
    fn copy(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    fn zeros_grad(&self, w: &Self::Weight) -> Result<Self::Grad>;
    fn fill_zero(&self, g: &mut Self::Grad) -> Result<()>;
    fn new_opt_state(&self, w: &Self::Weight) -> Result<Self::OptState>;
    fn grad_sq_norm(&self, g: &Self::Grad) -> Result<f64>;
    fn adamw(
        &self,
        w: &mut Self::Weight,
        g: &Self::Grad,
        s: &mut Self::OptState,
        hp: &AdamWStep,
    ) -> Result<()>;

    /// dL/dx of `linear`, adding dL/dW into `dw`.
    fn linear_backward(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        dy: &Self::Tensor,
        dw: &mut Self::Grad,
    ) -> Result<Self::Tensor>;
    /// dL/dx of `rms_norm`, adding dL/dw into `dw`.
    fn rms_norm_backward(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        dy: &Self::Tensor,
        eps: f32,
        dw: &mut Self::Grad,
    ) -> Result<Self::Tensor>;
    /// From the projections' outputs (before the transform) and the gradients at the
    /// transform's output, the gradients at its input; adds the norm weights' gradients.
    #[allow(clippy::too_many_arguments)]
    fn qk_norm_rope_backward(
        &self,
        q_pre: &Self::Tensor,
        k_pre: &Self::Tensor,
        dq: Self::Tensor,
        dk: Self::Tensor,
        q_norm: &Self::Weight,
        k_norm: &Self::Weight,
        d_q_norm: &mut Self::Grad,
        d_k_norm: &mut Self::Grad,
        shape: AttentionShape,
        eps: f32,
        rope: &Rope,
        positions: &[u32],
    ) -> Result<(Self::Tensor, Self::Tensor)>;
    /// Causal attention within each packed sequence (`bounds` are row offsets); returns the
    /// output and the per-(row, head) log-sum-exp the backward recomputes from.
    fn varlen_attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        bounds: &[usize],
        shape: AttentionShape,
    ) -> Result<(Self::Tensor, Self::Stats)>;
    #[allow(clippy::too_many_arguments)]
    fn varlen_attention_backward(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        out: &Self::Tensor,
        lse: &Self::Stats,
        d_out: &Self::Tensor,
        bounds: &[usize],
        shape: AttentionShape,
    ) -> Result<(Self::Tensor, Self::Tensor, Self::Tensor)>;
    fn swiglu_backward(
        &self,
        gate: &Self::Tensor,
        up: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)>;
    /// Scatter-adds each row of `dy` into row `ids[r]` of `dw`.
    fn embedding_backward(&self, ids: &[u32], dy: &Self::Tensor, dw: &mut Self::Grad)
    -> Result<()>;
    /// Fused output projection + weighted cross-entropy, chunked over the vocabulary:
    /// returns (Σ wₜ·CEₜ / normalizer, per-token CE, dL/dh) and adds dL/dW into `dw`.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        h: &Self::Tensor,
        w: &Self::Weight,
        targets: &[u32],
        weights: &[f32],
        normalizer: f32,
        dw: &mut Self::Grad,
    ) -> Result<(f64, Vec<f32>, Self::Tensor)>;
    /// log p(targets[r]) for every row of `h` under the output projection `w` (no gradient).
    fn target_log_probs(
        &self,
        h: &Self::Tensor,
        w: &Self::Weight,
        targets: &[u32],
    ) -> Result<Vec<f32>>;
    /// A weight as f32 on the host (checkpoints).
    fn weight_to_host(&self, w: &Self::Weight) -> Result<Vec<f32>>;
    fn grad_to_host(&self, g: &Self::Grad) -> Result<Vec<f32>>;
    fn opt_state_to_host(&self, s: &Self::OptState) -> Result<(Vec<f32>, Vec<f32>)>;
    fn opt_state_from_host(&self, w: &Self::Weight, m: &[f32], v: &[f32])
    -> Result<Self::OptState>;
}
