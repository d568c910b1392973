//! The operations the Qwen3 model is written in. The model (`model::Qwen3`) is generic
//! over this trait, so the CPU reference and the CUDA backend run the same model code.
//!
//! Tensors are 2-D `[rows, cols]` activations, one row per token of the flattened batch.

pub mod cpu;

use crate::Result;
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

pub trait Backend: Send + Sync {
    type Tensor: Send + Sync;
    type Weight: Send + Sync;
    type KvCache: Send + Sync;

    fn name(&self) -> &'static str;

    /// Takes a parameter from a mapped checkpoint into the backend's storage.
    fn load_weight(&self, t: &HostTensor<'_>) -> Result<Self::Weight>;
    fn alloc_kv(&self, layout: KvLayout) -> Result<Self::KvCache>;

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
}
