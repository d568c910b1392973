//! `TrainBackend` for `CudaBackend`: bf16 weights for every product, their f32 master copies
//! for AdamW, f32 gradients and moments; bf16 activations and activation gradients (the
//! precision transformers/Megatron train in). Every backward op is one of our kernels
//! (kernels/*.cu, next to its forward) except the matrix products (cuBLAS, f32 accumulation).
//! Nothing uses atomics: a step is reproducible bit for bit, as the resume contract needs.

use cudarc::driver::{CudaSlice, PushKernelArg};
use half::bf16;

use super::blas::Product;
use super::device::{CudaBackend, cuda_err, elementwise, grid};
use super::ops::{CudaTensor, CudaWeight, launch_err, same_shape, shape_err};
use crate::backend::{AdamWStep, AttentionShape, TrainBackend};
use crate::model::checkpoint::HostTensor;
use crate::model::rope::Rope;
use crate::{Error, Result};

/// Row-major `[rows, cols]` f32 statistics on the device (attention's log-sum-exp).
pub struct CudaStats {
    pub data: CudaSlice<f32>,
    pub rows: usize,
    pub cols: usize,
}

/// AdamW's first and second moments of one weight, f32.
pub struct CudaAdamState {
    pub m: CudaSlice<f32>,
    pub v: CudaSlice<f32>,
}

/// Blocks of the deterministic column-sum reductions (norm-weight gradients): a constant, so
/// the summation order, and with it every bit of the result, is the same on every device.
const NORM_PARTS: usize = 256;
const HEAD_NORM_PARTS: usize = 1024;
/// Blocks of the gradient square-norm reduction (`sq_norm_partials`).
const SQ_NORM_PARTS: usize = 256;

fn check_grad(op: &str, g: &CudaSlice<f32>, n: usize) -> Result<()> {
    if g.len() != n {
        return Err(shape_err(
            op,
            format!("gradient of {} elements for a weight of {n}", g.len()),
        ));
    }
    Ok(())
}

impl CudaBackend {
    fn download_f32(&self, x: &CudaSlice<f32>, n: usize) -> Result<Vec<f32>> {
        let mut v = self
            .stream()
            .clone_dtoh(x)
            .map_err(|e| cuda_err(format!("download: {e:?}")))?;
        v.truncate(n);
        Ok(v)
    }

    /// `dw += Σ_b partials[b]` over `parts` rows of `cols` (kernels/rmsnorm.cu).
    fn colsum_accumulate(
        &self,
        partials: &CudaSlice<f32>,
        parts: usize,
        cols: usize,
        dw: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (parts_i, cols_i) = (parts as i32, cols as i32);
        let mut b = self
            .stream()
            .launch_builder(self.func("colsum_accumulate")?);
        b.arg(partials).arg(&parts_i).arg(&cols_i).arg(dw);
        // SAFETY: partials hold parts × cols f32 and dw cols (checked by the callers).
        unsafe { b.launch(elementwise(cols)) }.map_err(launch_err("colsum_accumulate"))?;
        Ok(())
    }

    /// One of q or k through the norm+RoPE backward, in place of `grad`.
    #[allow(clippy::too_many_arguments)]
    fn head_norm_rope_backward(
        &self,
        pre: &CudaTensor,
        grad: &mut CudaTensor,
        w: &CudaWeight,
        dw: &mut CudaSlice<f32>,
        heads: usize,
        head_dim: usize,
        eps: f32,
        positions: &CudaSlice<u32>,
        inv_freq: &CudaSlice<f32>,
    ) -> Result<()> {
        same_shape("qk_norm_rope_backward", pre, grad)?;
        if pre.cols != heads * head_dim || w.len() != head_dim {
            return Err(shape_err(
                "qk_norm_rope_backward",
                format!("{}x{} for {heads} heads of {head_dim}", pre.rows, pre.cols),
            ));
        }
        check_grad("qk_norm_rope_backward", dw, head_dim)?;
        let items = pre.rows * heads;
        if items == 0 {
            return Ok(());
        }
        let parts = items.min(HEAD_NORM_PARTS);
        let mut partials = self.alloc_f32(parts * head_dim)?;
        let (rows, heads_i, hd) = (pre.rows as i32, heads as i32, head_dim as i32);
        let mut b = self
            .stream()
            .launch_builder(self.func("qk_norm_rope_backward")?);
        b.arg(&pre.data).arg(&mut grad.data).arg(&w.data);
        b.arg(positions).arg(inv_freq).arg(&mut partials);
        b.arg(&rows).arg(&heads_i).arg(&hd).arg(&eps);
        // SAFETY: pre and grad are rows × heads·head_dim, w head_dim, positions rows,
        // inv_freq head_dim/2, partials parts × head_dim; block 64 covers head_dim/2 <= 64
        // (checked by the caller).
        unsafe { b.launch(grid(parts, 1, 1, 64)) }.map_err(launch_err("qk_norm_rope_backward"))?;
        self.colsum_accumulate(&partials, parts, head_dim, dw)
    }
}

impl TrainBackend for CudaBackend {
    type Grad = CudaSlice<f32>;
    type OptState = CudaAdamState;
    type Stats = CudaStats;

    fn load_master_weight(&self, t: &HostTensor<'_>) -> Result<CudaWeight> {
        let master = t.to_f32();
        let rounded: Vec<bf16> = master.iter().map(|&v| bf16::from_f32(v)).collect();
        Ok(CudaWeight {
            data: self.upload(&rounded)?,
            shape: t.shape.clone(),
            master: Some(self.upload(&master)?),
        })
    }

    fn copy(&self, x: &CudaTensor) -> Result<CudaTensor> {
        Ok(CudaTensor {
            data: self
                .stream()
                .clone_dtod(&x.data)
                .map_err(|e| cuda_err(format!("copy: {e:?}")))?,
            rows: x.rows,
            cols: x.cols,
        })
    }

    fn zeros_grad(&self, w: &CudaWeight) -> Result<CudaSlice<f32>> {
        // Exactly w.len() elements: the length is what the shape checks compare.
        self.stream()
            .alloc_zeros::<f32>(w.len())
            .map_err(|e| cuda_err(format!("gradient alloc: {e:?}")))
    }

    fn fill_zero(&self, g: &mut CudaSlice<f32>) -> Result<()> {
        self.stream()
            .memset_zeros(g)
            .map_err(|e| cuda_err(format!("memset: {e:?}")))
    }

    fn new_opt_state(&self, w: &CudaWeight) -> Result<CudaAdamState> {
        Ok(CudaAdamState {
            m: self.zeros_grad(w)?,
            v: self.zeros_grad(w)?,
        })
    }

    fn grad_sq_norm(&self, g: &CudaSlice<f32>) -> Result<f64> {
        if g.is_empty() {
            return Ok(0.0);
        }
        let mut partials = self
            .stream()
            .alloc_zeros::<f64>(SQ_NORM_PARTS)
            .map_err(|e| cuda_err(format!("alloc: {e:?}")))?;
        let n = g.len() as u64;
        let mut b = self.stream().launch_builder(self.func("sq_norm_partials")?);
        b.arg(g).arg(&n).arg(&mut partials);
        // SAFETY: g holds n f32; one partial per block; block 256 matches the kernel's
        // shared array.
        unsafe { b.launch(grid(SQ_NORM_PARTS, 1, 1, 256)) }
            .map_err(launch_err("sq_norm_partials"))?;
        let host = self
            .stream()
            .clone_dtoh(&partials)
            .map_err(|e| cuda_err(format!("download: {e:?}")))?;
        Ok(host.iter().sum())
    }

    fn adamw(
        &self,
        w: &mut CudaWeight,
        g: &CudaSlice<f32>,
        s: &mut CudaAdamState,
        hp: &AdamWStep,
    ) -> Result<()> {
        let n = w.len();
        let master = w.master.as_mut().ok_or_else(|| Error::Backend {
            backend: "cuda",
            msg: "training needs f32 master weights; load the model with \
                  Qwen3::load_for_training"
                .into(),
        })?;
        check_grad("adamw", g, n)?;
        check_grad("adamw (m)", &s.m, n)?;
        check_grad("adamw (v)", &s.v, n)?;
        if n == 0 {
            return Ok(());
        }
        let bc1 = 1.0 - hp.beta1.powi(hp.step as i32);
        let bc2 = 1.0 - hp.beta2.powi(hp.step as i32);
        let n64 = n as u64;
        let mut b = self.stream().launch_builder(self.func("adamw")?);
        b.arg(master)
            .arg(&mut w.data)
            .arg(g)
            .arg(&mut s.m)
            .arg(&mut s.v);
        b.arg(&n64)
            .arg(&hp.lr)
            .arg(&hp.beta1)
            .arg(&hp.beta2)
            .arg(&hp.eps);
        b.arg(&hp.weight_decay)
            .arg(&hp.grad_scale)
            .arg(&bc1)
            .arg(&bc2);
        // SAFETY: master, data, g, m and v all hold n elements (checked above); the kernel
        // guards i < n.
        unsafe { b.launch(elementwise(n)) }.map_err(launch_err("adamw"))?;
        Ok(())
    }

    fn linear_backward(
        &self,
        x: &CudaTensor,
        w: &CudaWeight,
        dy: &CudaTensor,
        dw: &mut CudaSlice<f32>,
    ) -> Result<CudaTensor> {
        let (m, n, k) = (x.rows, w.rows(), w.cols());
        if x.cols != k || dy.rows != m || dy.cols != n {
            return Err(shape_err(
                "linear_backward",
                format!(
                    "x {}x{}, dy {}x{}, weight {:?}",
                    x.rows, x.cols, dy.rows, dy.cols, w.shape
                ),
            ));
        }
        check_grad("linear_backward", dw, n * k)?;
        let mut dx = self.tensor(m, k)?;
        if m == 0 {
            return Ok(dx);
        }
        self.gemm(
            Product::DyW,
            (m, n, k),
            &w.data,
            &dy.data,
            &mut dx.data,
            0.0,
        )?;
        self.gemm(Product::DyTX, (m, n, k), &x.data, &dy.data, dw, 1.0)?;
        Ok(dx)
    }

    fn rms_norm_backward(
        &self,
        x: &CudaTensor,
        w: &CudaWeight,
        dy: &CudaTensor,
        eps: f32,
        dw: &mut CudaSlice<f32>,
    ) -> Result<CudaTensor> {
        same_shape("rms_norm_backward", x, dy)?;
        let cols = x.cols;
        // The row lives in dynamic shared memory beside the kernel's 32-float reduction scratch.
        if w.len() != cols || (cols + 32) * 4 > 48 * 1024 {
            return Err(shape_err(
                "rms_norm_backward",
                format!("weight {} vs width {cols} (at most 12256)", w.len()),
            ));
        }
        check_grad("rms_norm_backward", dw, cols)?;
        let mut dx = self.tensor(x.rows, cols)?;
        if x.rows == 0 {
            return Ok(dx);
        }
        let parts = x.rows.min(NORM_PARTS);
        let mut partials = self.alloc_f32(parts * cols)?;
        let (rows_i, cols_i) = (x.rows as i32, cols as i32);
        let mut b = self
            .stream()
            .launch_builder(self.func("rms_norm_backward")?);
        b.arg(&x.data).arg(&w.data).arg(&dy.data).arg(&mut dx.data);
        b.arg(&mut partials).arg(&rows_i).arg(&cols_i).arg(&eps);
        let mut cfg = grid(parts, 1, 1, 256);
        cfg.shared_mem_bytes = (cols * 4) as u32;
        // SAFETY: x, dy and dx are rows × cols, w cols, partials parts × cols; the dynamic
        // shared memory holds one f32 per column (at most 48 KiB, checked above).
        unsafe { b.launch(cfg) }.map_err(launch_err("rms_norm_backward"))?;
        self.colsum_accumulate(&partials, parts, cols, dw)?;
        Ok(dx)
    }

    fn qk_norm_rope_backward(
        &self,
        q_pre: &CudaTensor,
        k_pre: &CudaTensor,
        mut dq: CudaTensor,
        mut dk: CudaTensor,
        q_norm: &CudaWeight,
        k_norm: &CudaWeight,
        d_q_norm: &mut CudaSlice<f32>,
        d_k_norm: &mut CudaSlice<f32>,
        shape: AttentionShape,
        eps: f32,
        rope: &Rope,
        positions: &[u32],
    ) -> Result<(CudaTensor, CudaTensor)> {
        let hd = shape.head_dim;
        if hd > 128
            || !hd.is_multiple_of(2)
            || rope.inv_freq.len() * 2 != hd
            || positions.len() != q_pre.rows
            || positions.len() != k_pre.rows
        {
            return Err(shape_err(
                "qk_norm_rope_backward",
                format!(
                    "{shape:?}, {} positions for {} q rows and {} k rows (head_dim even, <= 128)",
                    positions.len(),
                    q_pre.rows,
                    k_pre.rows
                ),
            ));
        }
        let pos_d = self.upload(positions)?;
        let freq_d = self.upload(&rope.inv_freq)?;
        self.head_norm_rope_backward(
            q_pre,
            &mut dq,
            q_norm,
            d_q_norm,
            shape.num_heads,
            hd,
            eps,
            &pos_d,
            &freq_d,
        )?;
        self.head_norm_rope_backward(
            k_pre,
            &mut dk,
            k_norm,
            d_k_norm,
            shape.num_kv_heads,
            hd,
            eps,
            &pos_d,
            &freq_d,
        )?;
        Ok((dq, dk))
    }

    fn varlen_attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        bounds: &[usize],
        shape: AttentionShape,
    ) -> Result<(CudaTensor, CudaStats)> {
        self.varlen_attention_impl(q, k, v, bounds, shape)
    }

    fn varlen_attention_backward(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        out: &CudaTensor,
        lse: &CudaStats,
        d_out: &CudaTensor,
        bounds: &[usize],
        shape: AttentionShape,
    ) -> Result<(CudaTensor, CudaTensor, CudaTensor)> {
        self.varlen_attention_backward_impl(q, k, v, out, lse, d_out, bounds, shape)
    }

    fn swiglu_backward(
        &self,
        gate: &CudaTensor,
        up: &CudaTensor,
        dy: &CudaTensor,
    ) -> Result<(CudaTensor, CudaTensor)> {
        same_shape("swiglu_backward", gate, up)?;
        same_shape("swiglu_backward", gate, dy)?;
        let mut dg = self.tensor(gate.rows, gate.cols)?;
        let mut du = self.tensor(gate.rows, gate.cols)?;
        let n = (gate.rows * gate.cols) as u64;
        if n == 0 {
            return Ok((dg, du));
        }
        let mut b = self.stream().launch_builder(self.func("swiglu_backward")?);
        b.arg(&gate.data).arg(&up.data).arg(&dy.data);
        b.arg(&mut dg.data).arg(&mut du.data).arg(&n);
        // SAFETY: all five buffers hold n elements; the kernel guards i < n.
        unsafe { b.launch(elementwise(n as usize)) }.map_err(launch_err("swiglu_backward"))?;
        Ok((dg, du))
    }

    fn embedding_backward(
        &self,
        ids: &[u32],
        dy: &CudaTensor,
        dw: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let hidden = dy.cols;
        if ids.len() != dy.rows || hidden == 0 || !dw.len().is_multiple_of(hidden) {
            return Err(shape_err(
                "embedding_backward",
                format!("{} ids for {}x{hidden}", ids.len(), dy.rows),
            ));
        }
        let vocab = dw.len() / hidden;
        if let Some(&id) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(shape_err(
                "embedding_backward",
                format!("id {id} outside the table ({vocab} rows)"),
            ));
        }
        if ids.is_empty() {
            return Ok(());
        }
        // Rows grouped by id (stable), one segment per distinct id: each block owns one table
        // row, so no two blocks add into the same place.
        let mut rows_by_id: Vec<u32> = (0..ids.len() as u32).collect();
        rows_by_id.sort_by_key(|&r| ids[r as usize]);
        let mut seg_start = Vec::new();
        let mut seg_id = Vec::new();
        for (i, &r) in rows_by_id.iter().enumerate() {
            let id = ids[r as usize];
            if seg_id.last() != Some(&id) {
                seg_start.push(i as u32);
                seg_id.push(id);
            }
        }
        seg_start.push(ids.len() as u32);
        let (rows_d, start_d, id_d) = (
            self.upload(&rows_by_id)?,
            self.upload(&seg_start)?,
            self.upload(&seg_id)?,
        );
        let h = hidden as i32;
        let mut b = self
            .stream()
            .launch_builder(self.func("embedding_backward")?);
        b.arg(&dy.data)
            .arg(&rows_d)
            .arg(&start_d)
            .arg(&id_d)
            .arg(dw)
            .arg(&h);
        // SAFETY: every id < vocab (checked), so each segment's table row lies in dw; row
        // indices < dy.rows; one block per distinct id.
        unsafe { b.launch(grid(seg_id.len(), 1, 1, 256)) }
            .map_err(launch_err("embedding_backward"))?;
        Ok(())
    }

    fn cross_entropy(
        &self,
        h: &CudaTensor,
        w: &CudaWeight,
        targets: &[u32],
        weights: &[f32],
        normalizer: f32,
        dw: &mut CudaSlice<f32>,
    ) -> Result<(f64, Vec<f32>, CudaTensor)> {
        self.cross_entropy_impl(h, w, targets, weights, normalizer, dw)
    }

    fn target_log_probs(
        &self,
        h: &CudaTensor,
        w: &CudaWeight,
        targets: &[u32],
    ) -> Result<Vec<f32>> {
        self.target_log_probs_impl(h, w, targets)
    }

    fn weight_to_host(&self, w: &CudaWeight) -> Result<Vec<f32>> {
        match &w.master {
            Some(m) => self.download_f32(m, w.len()),
            None => {
                let mut v = self.download(&w.data)?;
                v.truncate(w.len());
                Ok(v)
            }
        }
    }

    fn grad_to_host(&self, g: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.download_f32(g, g.len())
    }

    fn opt_state_to_host(&self, s: &CudaAdamState) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((
            self.download_f32(&s.m, s.m.len())?,
            self.download_f32(&s.v, s.v.len())?,
        ))
    }

    fn opt_state_from_host(&self, w: &CudaWeight, m: &[f32], v: &[f32]) -> Result<CudaAdamState> {
        let n = w.len();
        if m.len() != n || v.len() != n {
            return Err(shape_err(
                "opt_state_from_host",
                format!("moments of {} / {} elements for {n}", m.len(), v.len()),
            ));
        }
        if n == 0 {
            return self.new_opt_state(w);
        }
        Ok(CudaAdamState {
            m: self.upload(m)?,
            v: self.upload(v)?,
        })
    }
}

/// Host access to statistics, for the tests against the CPU reference.
impl CudaBackend {
    /// The statistics' f32 values.
    pub fn stats_to_host(&self, s: &CudaStats) -> Result<Vec<f32>> {
        self.download_f32(&s.data, s.rows * s.cols)
    }

    /// Uploads an f32 gradient (shaped like a weight of `g.len()` elements).
    pub fn grad_from_host(&self, g: &[f32]) -> Result<CudaSlice<f32>> {
        self.upload(g)
    }

    /// Uploads f32 statistics.
    pub fn stats_from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CudaStats> {
        if data.len() != rows * cols {
            return Err(shape_err(
                "stats_from_host",
                format!("{} values", data.len()),
            ));
        }
        Ok(CudaStats {
            data: self.upload(data)?,
            rows,
            cols,
        })
    }
}
