//! Host side of the fused output projection + cross-entropy (kernels/cross_entropy.cu): the
//! logits exist one vocabulary chunk at a time, as on the CPU (`cpu/loss.rs`).
//! Pass 1 folds each chunk into every row's running max and sum of exp; pass 2 recomputes
//! each chunk's logits, turns them into bf16 dlogits and runs the two gradient GEMMs.

use crate::backend::decode_graph::MetaField;
use cudarc::driver::{CudaSlice, PushKernelArg};
use half::bf16;

use super::blas::Product;
use super::device::{CudaBackend, cuda_err, grid};
use super::ops::{CudaTensor, CudaWeight, launch_err, shape_err};
use crate::{Error, Result};

/// Vocabulary columns per chunk (the CPU reference's chunk too).
const CHUNK: usize = 8192;

/// What the loss returns: (Σ wₜ·CEₜ / normalizer, CEₜ per row, dL/dh).
pub type LossOutput = (f64, Vec<f32>, CudaTensor);

impl CudaBackend {
    /// f32 logits of `h` against vocabulary rows `c0 .. c0 + width` of `w`.
    fn chunk_logits(
        &self,
        h: &CudaTensor,
        w: &CudaWeight,
        c0: usize,
        width: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let hidden = h.cols;
        let panel = w.data.slice(c0 * hidden..(c0 + width) * hidden);
        self.gemm(
            Product::XWt,
            (h.rows, width, hidden),
            &panel,
            &h.data,
            out,
            0.0,
        )
    }

    /// Each row's log-sum-exp over the vocabulary and its target's logit (pass 1).
    fn lse_and_target(
        &self,
        h: &CudaTensor,
        w: &CudaWeight,
        targets: &CudaSlice<u32>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (rows, vocab) = (h.rows, w.rows());
        let mut row_max = self.upload(&vec![f32::NEG_INFINITY; rows])?;
        let mut row_sum = self.upload(&vec![0.0; rows])?;
        let mut target_logit = self.upload(&vec![0.0; rows])?;
        let mut logits = self.alloc_f32(rows * CHUNK.min(vocab))?;
        for c0 in (0..vocab).step_by(CHUNK) {
            let width = CHUNK.min(vocab - c0);
            self.chunk_logits(h, w, c0, width, &mut logits)?;
            let (width_i, c0_i) = (width as i32, c0 as i32);
            let mut b = self.stream().launch_builder(self.func("ce_chunk_stats")?);
            b.arg(&logits).arg(&width_i).arg(&c0_i).arg(targets);
            b.arg(&mut row_max).arg(&mut row_sum).arg(&mut target_logit);
            // SAFETY: logits hold rows × width f32 (written by the GEMM above); the per-row
            // buffers and targets hold `rows` elements; one block per row.
            unsafe { b.launch(grid(rows, 1, 1, 256)) }.map_err(launch_err("ce_chunk_stats"))?;
        }
        let get = |x: &CudaSlice<f32>| {
            self.stream()
                .clone_dtoh(x)
                .map_err(|e| cuda_err(format!("cross-entropy download: {e:?}")))
        };
        let (max, sum) = (get(&row_max)?, get(&row_sum)?);
        let lse = max.iter().zip(&sum).map(|(m, s)| m + s.ln()).collect();
        Ok((lse, get(&target_logit)?))
    }

    fn check_targets(w: &CudaWeight, targets: &[u32], rows: usize) -> Result<()> {
        if targets.len() != rows {
            return Err(shape_err(
                "cross_entropy",
                format!("{} targets for {rows} rows", targets.len()),
            ));
        }
        let vocab = w.rows();
        if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "target id {t} outside the vocabulary ({vocab})"
            )));
        }
        Ok(())
    }

    pub(super) fn target_log_probs_impl(
        &self,
        h: &CudaTensor,
        w: &CudaWeight,
        targets: &[u32],
    ) -> Result<Vec<f32>> {
        Self::check_targets(w, targets, h.rows)?;
        if h.cols != w.cols() {
            return Err(shape_err(
                "target_log_probs",
                "hidden width vs weight".into(),
            ));
        }
        if h.rows == 0 {
            return Ok(Vec::new());
        }
        let (lse, target_logit) = self.lse_and_target(h, w, &self.upload(targets)?)?;
        Ok(target_logit.iter().zip(&lse).map(|(t, l)| t - l).collect())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn cross_entropy_impl(
        &self,
        h: &CudaTensor,
        w: &CudaWeight,
        targets: &[u32],
        weights: &[f32],
        normalizer: f32,
        dw: &mut CudaSlice<f32>,
    ) -> Result<LossOutput> {
        let (rows, hidden, vocab) = (h.rows, h.cols, w.rows());
        if weights.len() != rows || targets.len() != rows || hidden != w.cols() {
            return Err(shape_err(
                "cross_entropy",
                format!(
                    "{rows}x{hidden} hidden, {} targets, {} weights, weight {:?}",
                    targets.len(),
                    weights.len(),
                    w.shape
                ),
            ));
        }
        if dw.len() != w.len() {
            return Err(shape_err(
                "cross_entropy",
                format!("gradient of {} for a weight of {}", dw.len(), w.len()),
            ));
        }
        let active: Vec<u32> = (0..rows as u32)
            .filter(|&t| weights[t as usize] != 0.0)
            .collect();
        let active_targets: Vec<u32> = active.iter().map(|&t| targets[t as usize]).collect();
        Self::check_targets(w, &active_targets, active.len())?;
        let mut d_hidden = CudaTensor {
            data: self
                .stream()
                .alloc_zeros::<bf16>((rows * hidden).max(1))
                .map_err(|e| cuda_err(format!("alloc: {e:?}")))?,
            rows,
            cols: hidden,
        };
        let mut token_losses = vec![0f32; rows];
        if active.is_empty() {
            return Ok((0.0, token_losses, d_hidden));
        }
        let ta = active.len();
        let ha = self.gather(&h.data, &active, hidden, MetaField::LogitsRows)?;
        let targets_d = self.upload(&active_targets)?;
        let (lse, target_logit) = self.lse_and_target(&ha, w, &targets_d)?;
        let mut loss = 0f64;
        for (r, &t) in active.iter().enumerate() {
            let ce = lse[r] - target_logit[r];
            token_losses[t as usize] = ce;
            loss += weights[t as usize] as f64 * ce as f64;
        }
        loss /= normalizer as f64;

        let scale: Vec<f32> = active
            .iter()
            .map(|&t| weights[t as usize] / normalizer)
            .collect();
        let (lse_d, scale_d) = (self.upload(&lse)?, self.upload(&scale)?);
        let mut logits = self.alloc_f32(ta * CHUNK.min(vocab))?;
        let mut dlogits = self.alloc_bf16(ta * CHUNK.min(vocab))?;
        let mut dh = self.upload(&vec![0.0; ta * hidden])?;
        for c0 in (0..vocab).step_by(CHUNK) {
            let width = CHUNK.min(vocab - c0);
            self.chunk_logits(&ha, w, c0, width, &mut logits)?;
            let (width_i, c0_i) = (width as i32, c0 as i32);
            let mut b = self.stream().launch_builder(self.func("ce_chunk_grad")?);
            b.arg(&logits).arg(&width_i).arg(&c0_i).arg(&targets_d);
            b.arg(&lse_d).arg(&scale_d).arg(&mut dlogits);
            // SAFETY: logits and dlogits hold ta × width elements, the per-row buffers ta; the
            // kernel guards the column index against width.
            unsafe { b.launch(grid(ta, width.div_ceil(256), 1, 256)) }
                .map_err(launch_err("ce_chunk_grad"))?;
            let panel = w.data.slice(c0 * hidden..(c0 + width) * hidden);
            self.gemm(
                Product::DyW,
                (ta, width, hidden),
                &panel,
                &dlogits,
                &mut dh,
                1.0,
            )?;
            let mut dw_panel = dw.slice_mut(c0 * hidden..(c0 + width) * hidden);
            self.gemm(
                Product::DyTX,
                (ta, width, hidden),
                &ha.data,
                &dlogits,
                &mut dw_panel,
                1.0,
            )?;
        }
        let active_d = self.upload(&active)?;
        let cols = hidden as i32;
        let mut b = self.stream().launch_builder(self.func("ce_scatter_rows")?);
        b.arg(&dh).arg(&active_d).arg(&mut d_hidden.data).arg(&cols);
        // SAFETY: dh holds ta × hidden f32, active ta row indices < rows, d_hidden rows × hidden.
        unsafe { b.launch(grid(ta, 1, 1, 256)) }.map_err(launch_err("ce_scatter_rows"))?;
        Ok((loss, token_losses, d_hidden))
    }
}
