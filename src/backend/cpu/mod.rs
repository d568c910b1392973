//! The CPU reference backend: f32 activations (or bf16-rounded ones, `precision.rs`), f32
//! or bf16 weights, rayon across rows and heads. It runs everywhere and is the oracle the
//! CUDA backend is tested against.

pub mod activation;
mod amx;
pub mod attention;
mod attention_kernels;
pub mod bf16_linear;
pub mod dot;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod packed;
pub mod precision;
pub mod rope;
mod simd;
#[cfg(test)]
mod test_util;
pub mod threads;
mod train;

use std::sync::OnceLock;

use half::bf16;
use rayon::prelude::*;

use super::{AttentionShape, Backend};
use crate::kv::KvLayout;
use crate::model::batch::ForwardBatch;
use crate::model::checkpoint::HostTensor;
use crate::model::config::DType;
use crate::model::rope::Rope;
use crate::{Error, Result};
pub use precision::Precision;

/// Row-major `[rows, cols]` f32 activations.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTensor {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl CpuTensor {
    pub fn new(data: Vec<f32>, rows: usize, cols: usize) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        CpuTensor { data, rows, cols }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// A parameter. bf16 checkpoints stay bf16 in memory (half the bytes to stream per
/// decoded token); f16 is widened to f32 at load, since it has no cheap widening trick.
/// A 2-D parameter also holds the packed copy `linear` reads (`packed.rs`, or
/// `bf16_linear.rs` at bf16 precision), made on its first product and dropped whenever the
/// values change.
#[derive(Debug, Clone)]
pub enum CpuWeight {
    F32 {
        data: Vec<f32>,
        shape: Vec<usize>,
        packed: PackCache<f32>,
    },
    Bf16 {
        data: Vec<bf16>,
        shape: Vec<usize>,
        packed: PackCache<bf16>,
    },
}

/// The packed copies of a weight, each built once on first use by its precision's product.
#[derive(Clone)]
pub struct PackCache<W> {
    f32_path: OnceLock<packed::Packed<W>>,
    bf16_path: OnceLock<bf16_linear::Bf16Panels>,
}

impl<W> Default for PackCache<W> {
    fn default() -> Self {
        PackCache {
            f32_path: OnceLock::new(),
            bf16_path: OnceLock::new(),
        }
    }
}

impl<W> std::fmt::Debug for PackCache<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            match (
                self.f32_path.get().is_some(),
                self.bf16_path.get().is_some(),
            ) {
                (false, false) => "not packed",
                (true, false) => "packed for f32",
                (false, true) => "packed for bf16",
                (true, true) => "packed for f32 and bf16",
            },
        )
    }
}

impl<W: dot::Widen + Default + bf16_linear::ToBf16> PackCache<W> {
    fn get(&self, data: &[W], n: usize, k: usize) -> &packed::Packed<W> {
        self.f32_path
            .get_or_init(|| packed::Packed::new(data, n, k))
    }

    fn get_bf16(&self, data: &[W], n: usize, k: usize) -> &bf16_linear::Bf16Panels {
        self.bf16_path.get_or_init(|| {
            bf16_linear::Bf16Panels::new(data, n, k, bf16_linear::Bf16Kernel::best())
        })
    }

    /// The values changed: the next product packs them again.
    pub fn clear(&mut self) {
        self.f32_path.take();
        self.bf16_path.take();
    }
}

impl CpuWeight {
    pub fn f32(data: Vec<f32>, shape: Vec<usize>) -> Self {
        CpuWeight::F32 {
            data,
            shape,
            packed: PackCache::default(),
        }
    }

    pub fn bf16(data: Vec<bf16>, shape: Vec<usize>) -> Self {
        CpuWeight::Bf16 {
            data,
            shape,
            packed: PackCache::default(),
        }
    }

    pub fn shape(&self) -> &[usize] {
        match self {
            CpuWeight::F32 { shape, .. } | CpuWeight::Bf16 { shape, .. } => shape,
        }
    }

    pub fn rows(&self) -> usize {
        self.shape().first().copied().unwrap_or(1)
    }

    pub fn cols(&self) -> usize {
        self.shape().iter().skip(1).product()
    }

    /// Row `r` widened to f32 (embedding lookup, norm weights).
    pub fn row_f32(&self, r: usize) -> Vec<f32> {
        let c = self.cols();
        match self {
            CpuWeight::F32 { data, .. } => data[r * c..(r + 1) * c].to_vec(),
            CpuWeight::Bf16 { data, .. } => data[r * c..(r + 1) * c]
                .iter()
                .map(|v| v.to_f32())
                .collect(),
        }
    }

    /// The same parameter stored as f32 (training keeps f32 master weights).
    pub fn into_f32(self) -> CpuWeight {
        match self {
            CpuWeight::Bf16 { ref shape, .. } => CpuWeight::f32(self.to_f32(), shape.clone()),
            f => f,
        }
    }

    /// The whole parameter as f32 (1-D norm weights).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            CpuWeight::F32 { data, .. } => data.clone(),
            CpuWeight::Bf16 { data, .. } => data.iter().map(|v| v.to_f32()).collect(),
        }
    }
}

/// K and V pools of every layer in the shared paged layout, f32.
pub struct CpuKvCache {
    pub layout: KvLayout,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl CpuKvCache {
    fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        let n = self.layout.layer_elems();
        (
            &self.k[layer * n..(layer + 1) * n],
            &self.v[layer * n..(layer + 1) * n],
        )
    }
}

/// The CPU backend at one precision (f32 unless asked).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend {
    pub precision: Precision,
}

impl CpuBackend {
    pub fn new(precision: Precision) -> Self {
        CpuBackend { precision }
    }

    /// `t` with its values rounded to this backend's precision.
    pub(super) fn finish(&self, mut t: CpuTensor) -> CpuTensor {
        self.precision.round(&mut t.data);
        t
    }
}

pub(super) fn shape_err(op: &str, msg: String) -> Error {
    Error::Backend {
        backend: "cpu",
        msg: format!("{op}: {msg}"),
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type KvCache = CpuKvCache;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn load_weight(&self, t: &HostTensor<'_>) -> Result<CpuWeight> {
        let shape = t.shape.clone();
        Ok(match t.dtype {
            DType::BF16 => CpuWeight::bf16(t.to_bf16(), shape),
            DType::F32 | DType::F16 => CpuWeight::f32(t.to_f32(), shape),
        })
    }

    fn weight_shape(&self, w: &CpuWeight) -> Vec<usize> {
        w.shape().to_vec()
    }

    fn alloc_kv(&self, layout: KvLayout) -> Result<CpuKvCache> {
        let n = layout.total_elems();
        let mut k = Vec::new();
        let mut v = Vec::new();
        k.try_reserve_exact(n)
            .and_then(|_| v.try_reserve_exact(n))
            .map_err(|e| {
                Error::KvCacheFull(format!(
                    "cannot allocate {} KV blocks ({e})",
                    layout.num_blocks
                ))
            })?;
        k.resize(n, 0.0);
        v.resize(n, 0.0);
        Ok(CpuKvCache { layout, k, v })
    }

    fn embedding(&self, table: &CpuWeight, ids: &[u32]) -> Result<CpuTensor> {
        let (vocab, hidden) = (table.rows(), table.cols());
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        let mut data = vec![0f32; ids.len() * hidden];
        data.par_chunks_mut(hidden)
            .zip(ids.par_iter())
            .for_each(|(row, &id)| row.copy_from_slice(&table.row_f32(id as usize)));
        Ok(self.finish(CpuTensor::new(data, ids.len(), hidden)))
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &CpuWeight, eps: f32) -> Result<CpuTensor> {
        let w = weight.to_f32();
        if w.len() != x.cols {
            return Err(shape_err(
                "rms_norm",
                format!("weight {} vs width {}", w.len(), x.cols),
            ));
        }
        Ok(norm::rms_norm(x, &w, eps, self.precision))
    }

    fn add_rms_norm(
        &self,
        residual: &mut CpuTensor,
        delta: &CpuTensor,
        weight: &CpuWeight,
        eps: f32,
    ) -> Result<CpuTensor> {
        self.add_assign(residual, delta)?;
        self.rms_norm(residual, weight, eps)
    }

    fn add_assign(&self, residual: &mut CpuTensor, delta: &CpuTensor) -> Result<()> {
        if (residual.rows, residual.cols) != (delta.rows, delta.cols) {
            return Err(shape_err(
                "add",
                format!(
                    "{}x{} vs {}x{}",
                    residual.rows, residual.cols, delta.rows, delta.cols
                ),
            ));
        }
        residual
            .data
            .par_iter_mut()
            .zip(delta.data.par_iter())
            .for_each(|(r, d)| *r += d);
        self.precision.round(&mut residual.data);
        Ok(())
    }

    fn linear(&self, x: &CpuTensor, weight: &CpuWeight) -> Result<CpuTensor> {
        if weight.cols() != x.cols {
            return Err(shape_err(
                "linear",
                format!("weight {:?} vs input width {}", weight.shape(), x.cols),
            ));
        }
        let out = matmul::linear(&x.data, x.rows, x.cols, weight, self.precision);
        Ok(self.finish(CpuTensor::new(out, x.rows, weight.rows())))
    }

    fn qk_norm_rope(
        &self,
        q: &mut CpuTensor,
        k: &mut CpuTensor,
        q_norm: &CpuWeight,
        k_norm: &CpuWeight,
        shape: AttentionShape,
        eps: f32,
        rope: &Rope,
        positions: &[u32],
    ) -> Result<()> {
        if q.cols != shape.num_heads * shape.head_dim
            || k.cols != shape.num_kv_heads * shape.head_dim
        {
            return Err(shape_err(
                "qk_norm_rope",
                format!("q width {} / k width {} vs {shape:?}", q.cols, k.cols),
            ));
        }
        rope::qk_norm_rope(
            q,
            k,
            &q_norm.to_f32(),
            &k_norm.to_f32(),
            shape.head_dim,
            eps,
            rope,
            positions,
            self.precision,
        );
        Ok(())
    }

    fn write_kv(
        &self,
        cache: &mut CpuKvCache,
        layer: usize,
        k: &CpuTensor,
        v: &CpuTensor,
        slot_mapping: &[u32],
    ) -> Result<()> {
        let l = cache.layout;
        let capacity = l.num_blocks * l.block_size;
        if let Some(&s) = slot_mapping.iter().find(|&&s| s as usize >= capacity) {
            return Err(shape_err(
                "write_kv",
                format!("slot {s} beyond the cache's {capacity} slots"),
            ));
        }
        let base = layer * l.layer_elems();
        for (row, &slot) in slot_mapping.iter().enumerate() {
            for h in 0..l.num_kv_heads {
                let dst = base + l.slot_offset(slot as usize, h);
                let src = row * k.cols + h * l.head_dim;
                cache.k[dst..dst + l.head_dim].copy_from_slice(&k.data[src..src + l.head_dim]);
                cache.v[dst..dst + l.head_dim].copy_from_slice(&v.data[src..src + l.head_dim]);
            }
        }
        Ok(())
    }

    fn copy_block(&self, cache: &mut CpuKvCache, src: u32, dst: u32) -> Result<()> {
        let l = cache.layout;
        if src as usize >= l.num_blocks || dst as usize >= l.num_blocks {
            return Err(shape_err(
                "copy_block",
                format!("block {src} or {dst} of {}", l.num_blocks),
            ));
        }
        let n = l.block_elems();
        for layer in 0..l.num_layers {
            let base = layer * l.layer_elems();
            let (s, d) = (base + src as usize * n, base + dst as usize * n);
            cache.k.copy_within(s..s + n, d);
            cache.v.copy_within(s..s + n, d);
        }
        Ok(())
    }

    fn attention(
        &self,
        q: &CpuTensor,
        cache: &CpuKvCache,
        layer: usize,
        batch: &ForwardBatch,
        shape: AttentionShape,
    ) -> Result<CpuTensor> {
        let (k, v) = cache.layer(layer);
        Ok(self.finish(attention::paged_attention(
            q,
            k,
            v,
            &cache.layout,
            batch,
            shape,
            self.precision,
        )))
    }

    fn swiglu(&self, gate: &CpuTensor, up: &CpuTensor) -> Result<CpuTensor> {
        if (gate.rows, gate.cols) != (up.rows, up.cols) {
            return Err(shape_err("swiglu", "gate and up differ in shape".into()));
        }
        Ok(activation::swiglu(gate, up, self.precision))
    }

    fn gather_rows(&self, x: &CpuTensor, rows: &[u32]) -> Result<CpuTensor> {
        let mut data = Vec::with_capacity(rows.len() * x.cols);
        for &r in rows {
            if r as usize >= x.rows {
                return Err(shape_err("gather_rows", format!("row {r} of {}", x.rows)));
            }
            data.extend_from_slice(x.row(r as usize));
        }
        Ok(CpuTensor::new(data, rows.len(), x.cols))
    }

    fn to_host(&self, x: &CpuTensor) -> Result<Vec<f32>> {
        Ok(x.data.clone())
    }
}
