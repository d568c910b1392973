//! `Backend` for `CudaBackend`: every op checks shapes on the host, then launches one of our
//! kernels (or cuBLAS for `linear`) on the backend's stream.

use cudarc::driver::{CudaSlice, PushKernelArg};
use half::bf16;

use super::attention;
use super::blas::Product;
use super::device::{CudaBackend, cuda_err, elementwise, grid};
use crate::backend::decode_graph::{MetaField, SKIP_SLOT};
use crate::backend::{AttentionShape, Backend, EagerForward, StepContext};
use crate::kv::KvLayout;
use crate::model::batch::ForwardBatch;
use crate::model::checkpoint::HostTensor;
use crate::model::rope::Rope;
use crate::{Error, Result};

/// Row-major `[rows, cols]` bf16 activations on the device.
pub struct CudaTensor {
    pub data: CudaSlice<bf16>,
    pub rows: usize,
    pub cols: usize,
}

/// A parameter, bf16 on the device whatever the checkpoint's dtype (uploaded once). A weight
/// loaded for training also keeps its f32 master copy, which AdamW updates and re-rounds into
/// `data` (what every forward and backward product reads).
pub struct CudaWeight {
    pub data: CudaSlice<bf16>,
    pub shape: Vec<usize>,
    pub master: Option<CudaSlice<f32>>,
}

impl CudaWeight {
    pub(super) fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }
    pub(super) fn cols(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
    pub(super) fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// K and V pools of every layer, bf16, in the shared paged layout (docs/kv-layout.md).
pub struct CudaKvCache {
    pub layout: KvLayout,
    pub k: CudaSlice<bf16>,
    pub v: CudaSlice<bf16>,
}

pub(super) fn shape_err(op: &str, msg: String) -> Error {
    cuda_err(format!("{op}: {msg}"))
}

pub(super) fn launch_err(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| cuda_err(format!("launch of {op}: {e:?}"))
}

pub(super) fn same_shape(op: &str, a: &CudaTensor, b: &CudaTensor) -> Result<()> {
    if (a.rows, a.cols) != (b.rows, b.cols) {
        return Err(shape_err(
            op,
            format!("{}x{} vs {}x{}", a.rows, a.cols, b.rows, b.cols),
        ));
    }
    Ok(())
}

impl CudaBackend {
    pub(super) fn tensor(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor {
            data: self.alloc_bf16(rows * cols)?,
            rows,
            cols,
        })
    }

    /// `out[r] = table[ids[r]]` for a device table of `cols`-wide rows (embedding and gather);
    /// `field` says which of a graph step's metadata `ids` are.
    pub(super) fn gather(
        &self,
        table: &CudaSlice<bf16>,
        ids: &[u32],
        cols: usize,
        field: MetaField,
    ) -> Result<CudaTensor> {
        let mut out = self.tensor(ids.len(), cols)?;
        if ids.is_empty() {
            return Ok(out);
        }
        let ids_d = self.meta_arg(field, ids)?;
        let ids_p = ids_d.ptr(self);
        let cols_i = cols as i32;
        let mut b = self.stream().launch_builder(self.func("embedding_gather")?);
        b.arg(table).arg(&ids_p).arg(&mut out.data).arg(&cols_i);
        // SAFETY: the caller checked every id against the table's rows; `out` holds
        // ids.len() * cols elements, one block per id.
        unsafe { b.launch(grid(ids.len(), 1, 1, 256)) }.map_err(launch_err("embedding_gather"))?;
        Ok(out)
    }

    /// The fused attention input transform: q in place, k and v straight into the cache.
    #[allow(clippy::too_many_arguments)]
    fn qk_norm_rope_impl(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        v: Option<&CudaTensor>,
        q_norm: &CudaWeight,
        k_norm: &CudaWeight,
        shape: AttentionShape,
        eps: f32,
        rope: &Rope,
        positions: &[u32],
        cache: Option<(&mut CudaKvCache, usize, &[u32])>,
    ) -> Result<()> {
        let AttentionShape {
            num_heads,
            num_kv_heads,
            head_dim,
        } = shape;
        if q.cols != num_heads * head_dim
            || k.cols != num_kv_heads * head_dim
            || q.rows != k.rows
            || positions.len() != q.rows
            || q_norm.len() != head_dim
            || k_norm.len() != head_dim
            || rope.inv_freq.len() * 2 != head_dim
        {
            return Err(shape_err(
                "qk_norm_rope",
                format!(
                    "q {}x{}, k {}x{}, {} positions, norms {}/{} vs {shape:?}",
                    q.rows,
                    q.cols,
                    k.rows,
                    k.cols,
                    positions.len(),
                    q_norm.len(),
                    k_norm.len()
                ),
            ));
        }
        if q.rows == 0 {
            return Ok(());
        }
        let pos_d = self.meta_arg(MetaField::Positions, positions)?;
        let pos_p = pos_d.ptr(self);
        let (freq_p, _freq_owner) = self.freq_arg(&rope.inv_freq)?;
        let (nh, nkv, hd) = (num_heads as i32, num_kv_heads as i32, head_dim as i32);
        let null: u64 = 0;
        // Checks and uploads first: the launch builder holds q and k mutably borrowed.
        let fused = match (&cache, v) {
            (Some((c, layer, slots)), Some(v)) => {
                check_slots(&c.layout, slots, q.rows)?;
                check_layer(&c.layout, *layer)?;
                same_shape("qk_norm_rope (v)", k, v)?;
                let slots_d = self.meta_arg(MetaField::Slots, slots)?;
                Some((
                    slots_d.ptr(self),
                    slots_d,
                    (layer * c.layout.layer_elems()) as u64,
                    c.layout.block_size as i32,
                ))
            }
            _ => None,
        };
        let f = self.func("qk_norm_rope")?;
        let mut b = self.stream().launch_builder(f);
        b.arg(&mut q.data).arg(&mut k.data);
        let no_slots;
        let (heads, layer_off, block_size) = match (cache, v, &fused) {
            (Some((cache, _, _)), Some(v), Some((slots_p, _, layer_off, block_size))) => {
                b.arg(&v.data).arg(&q_norm.data).arg(&k_norm.data);
                b.arg(&pos_p).arg(&freq_p).arg(slots_p);
                b.arg(&mut cache.k).arg(&mut cache.v);
                (num_heads + 2 * num_kv_heads, *layer_off, *block_size)
            }
            _ => {
                // v, k_cache and v_cache are null: the kernel transforms k in place.
                no_slots = self.upload(&[0u32])?;
                b.arg(&null).arg(&q_norm.data).arg(&k_norm.data);
                b.arg(&pos_p).arg(&freq_p).arg(&no_slots);
                b.arg(&null).arg(&null);
                (num_heads + num_kv_heads, 0u64, 1i32)
            }
        };
        b.arg(&layer_off)
            .arg(&nh)
            .arg(&nkv)
            .arg(&hd)
            .arg(&block_size)
            .arg(&eps);
        // SAFETY: shapes checked above: one block per (row, head), each head inside its row;
        // slots were checked against the cache's capacity, layer against its layer count.
        unsafe { b.launch(grid(q.rows, heads, 1, 64)) }.map_err(launch_err("qk_norm_rope"))?;
        Ok(())
    }

    fn elementwise2(
        &self,
        name: &'static str,
        a: &CudaTensor,
        b_in: &CudaTensor,
    ) -> Result<CudaTensor> {
        same_shape(name, a, b_in)?;
        let mut out = self.tensor(a.rows, a.cols)?;
        let n = (a.rows * a.cols) as u64;
        if n == 0 {
            return Ok(out);
        }
        let mut b = self.stream().launch_builder(self.func(name)?);
        b.arg(&a.data).arg(&b_in.data).arg(&mut out.data).arg(&n);
        // SAFETY: all three buffers hold n elements; the kernel guards i < n.
        unsafe { b.launch(elementwise(n as usize)) }.map_err(launch_err(name))?;
        Ok(out)
    }

    /// Downloads a device buffer (to_host and tests).
    pub fn download(&self, x: &CudaSlice<bf16>) -> Result<Vec<f32>> {
        let host: Vec<bf16> = self
            .stream()
            .clone_dtoh(x)
            .map_err(|e| cuda_err(format!("download: {e:?}")))?;
        Ok(host.iter().map(|v| v.to_f32()).collect())
    }

    /// Uploads f32 host data as a bf16 tensor (tests, and host-built inputs).
    pub fn tensor_from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CudaTensor> {
        if data.len() != rows * cols {
            return Err(shape_err(
                "tensor_from_host",
                format!("{} values for {rows}x{cols}", data.len()),
            ));
        }
        let host: Vec<bf16> = data.iter().map(|&v| bf16::from_f32(v)).collect();
        Ok(CudaTensor {
            data: self.upload(&host)?,
            rows,
            cols,
        })
    }

    /// The K (or V) pool of every layer as f32 on the host (tests).
    pub fn kv_to_host(&self, cache: &CudaKvCache) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.download(&cache.k)?, self.download(&cache.v)?))
    }

    /// Fills every pool element from f32 host data (tests).
    pub fn kv_from_host(&self, cache: &mut CudaKvCache, k: &[f32], v: &[f32]) -> Result<()> {
        let n = cache.layout.total_elems();
        if k.len() != n || v.len() != n {
            return Err(shape_err(
                "kv_from_host",
                format!("{} / {} of {n}", k.len(), v.len()),
            ));
        }
        let to = |x: &[f32]| x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>();
        cache.k = self.upload(&to(k))?;
        cache.v = self.upload(&to(v))?;
        Ok(())
    }
}

pub(super) fn check_layer(l: &KvLayout, layer: usize) -> Result<()> {
    if layer >= l.num_layers {
        return Err(shape_err(
            "kv",
            format!("layer {layer} of {}", l.num_layers),
        ));
    }
    Ok(())
}

fn check_slots(l: &KvLayout, slots: &[u32], rows: usize) -> Result<()> {
    let capacity = l.num_blocks * l.block_size;
    if slots.len() != rows {
        return Err(shape_err(
            "write_kv",
            format!("{} slots for {rows} rows", slots.len()),
        ));
    }
    // SKIP_SLOT marks a row whose K/V is not written (padding of a graph decode step).
    if let Some(&s) = slots
        .iter()
        .find(|&&s| s as usize >= capacity && s != SKIP_SLOT)
    {
        return Err(shape_err(
            "write_kv",
            format!("slot {s} beyond the cache's {capacity} slots"),
        ));
    }
    Ok(())
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Weight = CudaWeight;
    type KvCache = CudaKvCache;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn load_weight(&self, t: &HostTensor<'_>) -> Result<CudaWeight> {
        Ok(CudaWeight {
            data: self.upload(&t.to_bf16())?,
            shape: t.shape.clone(),
            master: None,
        })
    }

    fn alloc_kv(&self, layout: KvLayout) -> Result<CudaKvCache> {
        let n = layout.total_elems();
        let alloc = || {
            self.stream().alloc_zeros::<bf16>(n.max(1)).map_err(|e| {
                Error::KvCacheFull(format!(
                    "cannot allocate {} KV blocks on the GPU ({e:?})",
                    layout.num_blocks
                ))
            })
        };
        Ok(CudaKvCache {
            layout,
            k: alloc()?,
            v: alloc()?,
        })
    }

    fn weight_shape(&self, w: &CudaWeight) -> Vec<usize> {
        w.shape.clone()
    }

    fn embedding(&self, table: &CudaWeight, ids: &[u32]) -> Result<CudaTensor> {
        let vocab = table.rows();
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        self.gather(&table.data, ids, table.cols(), MetaField::TokenIds)
    }

    fn rms_norm(&self, x: &CudaTensor, weight: &CudaWeight, eps: f32) -> Result<CudaTensor> {
        if weight.len() != x.cols {
            return Err(shape_err(
                "rms_norm",
                format!("weight {} vs width {}", weight.len(), x.cols),
            ));
        }
        let mut y = self.tensor(x.rows, x.cols)?;
        if x.rows == 0 {
            return Ok(y);
        }
        let cols = x.cols as i32;
        let mut b = self.stream().launch_builder(self.func("rms_norm")?);
        b.arg(&x.data)
            .arg(&weight.data)
            .arg(&mut y.data)
            .arg(&cols)
            .arg(&eps);
        // SAFETY: x and y hold rows * cols elements, w holds cols; one block per row.
        unsafe { b.launch(grid(x.rows, 1, 1, 256)) }.map_err(launch_err("rms_norm"))?;
        Ok(y)
    }

    fn add_rms_norm(
        &self,
        residual: &mut CudaTensor,
        delta: &CudaTensor,
        weight: &CudaWeight,
        eps: f32,
    ) -> Result<CudaTensor> {
        same_shape("add_rms_norm", residual, delta)?;
        if weight.len() != residual.cols {
            return Err(shape_err(
                "add_rms_norm",
                format!("weight {} vs width {}", weight.len(), residual.cols),
            ));
        }
        let mut y = self.tensor(residual.rows, residual.cols)?;
        if residual.rows == 0 {
            return Ok(y);
        }
        let cols = residual.cols as i32;
        let mut b = self.stream().launch_builder(self.func("add_rms_norm")?);
        b.arg(&mut residual.data).arg(&delta.data).arg(&weight.data);
        b.arg(&mut y.data).arg(&cols).arg(&eps);
        // SAFETY: residual, delta and y hold rows * cols elements, w holds cols.
        unsafe { b.launch(grid(residual.rows, 1, 1, 256)) }.map_err(launch_err("add_rms_norm"))?;
        Ok(y)
    }

    fn add_assign(&self, residual: &mut CudaTensor, delta: &CudaTensor) -> Result<()> {
        same_shape("add", residual, delta)?;
        let n = (residual.rows * residual.cols) as u64;
        if n == 0 {
            return Ok(());
        }
        let mut b = self.stream().launch_builder(self.func("add_assign")?);
        b.arg(&mut residual.data).arg(&delta.data).arg(&n);
        // SAFETY: both buffers hold n elements; the kernel guards i < n.
        unsafe { b.launch(elementwise(n as usize)) }.map_err(launch_err("add_assign"))?;
        Ok(())
    }

    fn linear(&self, x: &CudaTensor, weight: &CudaWeight) -> Result<CudaTensor> {
        let (m, k, n) = (x.rows, x.cols, weight.rows());
        if weight.cols() != k {
            return Err(shape_err(
                "linear",
                format!("weight {:?} vs input width {k}", weight.shape),
            ));
        }
        let mut y = self.tensor(m, n)?;
        if m == 0 {
            return Ok(y);
        }
        self.gemm(
            Product::XWt,
            (m, n, k),
            &weight.data,
            &x.data,
            &mut y.data,
            0.0,
        )?;
        Ok(y)
    }

    fn qk_norm_rope(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        q_norm: &CudaWeight,
        k_norm: &CudaWeight,
        shape: AttentionShape,
        eps: f32,
        rope: &Rope,
        positions: &[u32],
    ) -> Result<()> {
        self.qk_norm_rope_impl(
            q, k, None, q_norm, k_norm, shape, eps, rope, positions, None,
        )
    }

    fn qk_norm_rope_write_kv(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        v: &CudaTensor,
        q_norm: &CudaWeight,
        k_norm: &CudaWeight,
        shape: AttentionShape,
        eps: f32,
        rope: &Rope,
        batch: &ForwardBatch,
        cache: &mut CudaKvCache,
        layer: usize,
    ) -> Result<()> {
        self.qk_norm_rope_impl(
            q,
            k,
            Some(v),
            q_norm,
            k_norm,
            shape,
            eps,
            rope,
            &batch.positions,
            Some((cache, layer, &batch.slot_mapping)),
        )
    }

    fn write_kv(
        &self,
        cache: &mut CudaKvCache,
        layer: usize,
        k: &CudaTensor,
        v: &CudaTensor,
        slot_mapping: &[u32],
    ) -> Result<()> {
        let l = cache.layout;
        check_layer(&l, layer)?;
        check_slots(&l, slot_mapping, k.rows)?;
        same_shape("write_kv", k, v)?;
        if k.cols != l.num_kv_heads * l.head_dim {
            return Err(shape_err(
                "write_kv",
                format!("k width {} vs {l:?}", k.cols),
            ));
        }
        if k.rows == 0 {
            return Ok(());
        }
        let slots_d = self.meta_arg(MetaField::Slots, slot_mapping)?;
        let slots_p = slots_d.ptr(self);
        let layer_off = (layer * l.layer_elems()) as u64;
        let (nkv, hd, bs) = (
            l.num_kv_heads as i32,
            l.head_dim as i32,
            l.block_size as i32,
        );
        let mut b = self.stream().launch_builder(self.func("write_kv")?);
        b.arg(&k.data)
            .arg(&v.data)
            .arg(&slots_p)
            .arg(&mut cache.k)
            .arg(&mut cache.v);
        b.arg(&layer_off).arg(&nkv).arg(&hd).arg(&bs);
        // SAFETY: slots and layer checked against the layout; k and v are rows x kv width.
        unsafe { b.launch(grid(k.rows, l.num_kv_heads, 1, 64)) }.map_err(launch_err("write_kv"))?;
        Ok(())
    }

    fn copy_block(&self, cache: &mut CudaKvCache, src: u32, dst: u32) -> Result<()> {
        let l = cache.layout;
        if src as usize >= l.num_blocks || dst as usize >= l.num_blocks {
            return Err(shape_err(
                "copy_block",
                format!("block {src} or {dst} of {}", l.num_blocks),
            ));
        }
        let n = l.block_elems();
        let s = self.stream().clone();
        let err = |e| cuda_err(format!("copy_block: {e:?}"));
        for layer in 0..l.num_layers {
            let base = layer * l.layer_elems();
            let (from, to) = (base + src as usize * n, base + dst as usize * n);
            for pool in [&mut cache.k, &mut cache.v] {
                // Through a temporary: one slice cannot be borrowed for reading and writing.
                let tmp = s.clone_dtod(&pool.slice(from..from + n)).map_err(err)?;
                s.memcpy_dtod(&tmp, &mut pool.slice_mut(to..to + n))
                    .map_err(err)?;
            }
        }
        Ok(())
    }

    fn attention(
        &self,
        q: &CudaTensor,
        cache: &CudaKvCache,
        layer: usize,
        batch: &ForwardBatch,
        shape: AttentionShape,
    ) -> Result<CudaTensor> {
        attention::paged_attention(self, q, cache, layer, batch, shape)
    }

    fn swiglu(&self, gate: &CudaTensor, up: &CudaTensor) -> Result<CudaTensor> {
        self.elementwise2("swiglu", gate, up)
    }

    fn gather_rows(&self, x: &CudaTensor, rows: &[u32]) -> Result<CudaTensor> {
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= x.rows) {
            return Err(shape_err("gather_rows", format!("row {r} of {}", x.rows)));
        }
        self.gather(&x.data, rows, x.cols, MetaField::LogitsRows)
    }

    fn forward_step(
        &self,
        batch: &ForwardBatch,
        kv: &mut CudaKvCache,
        ctx: &StepContext<'_, CudaWeight>,
        eager: &mut EagerForward<'_, Self>,
    ) -> Result<CudaTensor> {
        self.graph_forward_step(batch, kv, ctx, eager)
    }

    fn device_memory(&self) -> Option<(usize, usize)> {
        self.memory_info().ok()
    }

    fn kv_element_bytes(&self) -> usize {
        std::mem::size_of::<bf16>()
    }

    fn to_host(&self, x: &CudaTensor) -> Result<Vec<f32>> {
        let mut v = self.download(&x.data)?;
        v.truncate(x.rows * x.cols);
        Ok(v)
    }

    fn select_tokens(
        &self,
        logits: &CudaTensor,
        rows: &[crate::backend::TokenChoice<'_>],
    ) -> Result<Vec<crate::backend::RowChoice>> {
        self.select_tokens_on_device(logits, rows)
    }
}
