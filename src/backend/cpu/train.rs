//! `TrainBackend` for the CPU: every backward op of `cpu/*.rs` and AdamW, in f32.
//! Training needs f32 weights (the master copy is the model), so bf16 checkpoints are
//! widened when loaded for training (`CpuWeight::to_f32_weight`).

use rayon::prelude::*;

use super::{
    CpuBackend, CpuTensor, CpuWeight, activation, attention, loss, matmul, norm, rope, shape_err,
};
use crate::backend::{AdamWStep, AttentionShape, TrainBackend};
use crate::model::checkpoint::HostTensor;
use crate::model::rope::Rope;
use crate::{Error, Result};

fn f32_data(w: &CpuWeight) -> Result<&[f32]> {
    match w {
        CpuWeight::F32 { data, .. } => Ok(data),
        CpuWeight::Bf16 { .. } => Err(Error::Backend {
            backend: "cpu",
            msg: "training needs f32 weights; load the model with Qwen3::load_for_training".into(),
        }),
    }
}

fn check_len(op: &str, g: &[f32], n: usize) -> Result<()> {
    if g.len() != n {
        return Err(shape_err(
            op,
            format!("gradient of {} elements for a weight of {n}", g.len()),
        ));
    }
    Ok(())
}

impl TrainBackend for CpuBackend {
    type Grad = Vec<f32>;
    type OptState = (Vec<f32>, Vec<f32>);
    type Stats = CpuTensor;

    fn load_master_weight(&self, t: &HostTensor<'_>) -> Result<CpuWeight> {
        Ok(CpuWeight::f32(t.to_f32(), t.shape.clone()))
    }

    fn copy(&self, x: &CpuTensor) -> Result<CpuTensor> {
        Ok(x.clone())
    }

    fn zeros_grad(&self, w: &CpuWeight) -> Result<Vec<f32>> {
        Ok(vec![0.0; w.rows() * w.cols()])
    }

    fn fill_zero(&self, g: &mut Vec<f32>) -> Result<()> {
        g.fill(0.0);
        Ok(())
    }

    fn new_opt_state(&self, w: &CpuWeight) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = w.rows() * w.cols();
        Ok((vec![0.0; n], vec![0.0; n]))
    }

    fn grad_sq_norm(&self, g: &Vec<f32>) -> Result<f64> {
        // Fixed chunks summed in order: reproducible bit for bit.
        let parts: Vec<f64> = g
            .par_chunks(4096)
            .map(|c| c.iter().map(|&x| x as f64 * x as f64).sum())
            .collect();
        Ok(parts.iter().sum())
    }

    fn adamw(
        &self,
        w: &mut CpuWeight,
        g: &Vec<f32>,
        s: &mut (Vec<f32>, Vec<f32>),
        hp: &AdamWStep,
    ) -> Result<()> {
        let CpuWeight::F32 { data, packed, .. } = w else {
            return f32_data(w).map(|_| ());
        };
        packed.clear();
        check_len("adamw", g, data.len())?;
        let bc1 = 1.0 - hp.beta1.powi(hp.step as i32);
        let bc2 = 1.0 - hp.beta2.powi(hp.step as i32);
        let (m, v) = s;
        data.par_iter_mut()
            .zip(g.par_iter())
            .zip(m.par_iter_mut().zip(v.par_iter_mut()))
            .for_each(|((p, &g), (m, v))| {
                let g = g * hp.grad_scale;
                *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
                *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
                let update = (*m / bc1) / ((*v / bc2).sqrt() + hp.eps);
                // Decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW.
                *p -= hp.lr * (update + hp.weight_decay * *p);
            });
        Ok(())
    }

    fn linear_backward(
        &self,
        x: &CpuTensor,
        w: &CpuWeight,
        dy: &CpuTensor,
        dw: &mut Vec<f32>,
    ) -> Result<CpuTensor> {
        let data = f32_data(w)?;
        let (n, k) = (w.rows(), w.cols());
        check_len("linear_backward", dw, n * k)?;
        matmul::linear_backward_weight(&dy.data, dy.rows, n, &x.data, k, dw);
        Ok(CpuTensor::new(
            matmul::linear_backward_input(&dy.data, dy.rows, n, data, k),
            dy.rows,
            k,
        ))
    }

    fn rms_norm_backward(
        &self,
        x: &CpuTensor,
        w: &CpuWeight,
        dy: &CpuTensor,
        eps: f32,
        dw: &mut Vec<f32>,
    ) -> Result<CpuTensor> {
        let (dx, g) = norm::rms_norm_backward(x, f32_data(w)?, dy, eps);
        check_len("rms_norm_backward", dw, g.len())?;
        dw.iter_mut().zip(g).for_each(|(a, b)| *a += b);
        Ok(dx)
    }

    fn qk_norm_rope_backward(
        &self,
        q_pre: &CpuTensor,
        k_pre: &CpuTensor,
        mut dq: CpuTensor,
        mut dk: CpuTensor,
        q_norm: &CpuWeight,
        k_norm: &CpuWeight,
        d_q_norm: &mut Vec<f32>,
        d_k_norm: &mut Vec<f32>,
        shape: AttentionShape,
        eps: f32,
        rope_params: &Rope,
        positions: &[u32],
    ) -> Result<(CpuTensor, CpuTensor)> {
        let (gq, gk) = rope::qk_norm_rope_backward(
            q_pre,
            k_pre,
            &mut dq,
            &mut dk,
            f32_data(q_norm)?,
            f32_data(k_norm)?,
            shape.head_dim,
            eps,
            rope_params,
            positions,
        );
        d_q_norm.iter_mut().zip(gq).for_each(|(a, b)| *a += b);
        d_k_norm.iter_mut().zip(gk).for_each(|(a, b)| *a += b);
        Ok((dq, dk))
    }

    fn varlen_attention(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        bounds: &[usize],
        shape: AttentionShape,
    ) -> Result<(CpuTensor, CpuTensor)> {
        if bounds.last() != Some(&q.rows) {
            return Err(shape_err(
                "varlen_attention",
                format!("bounds {bounds:?} for {} rows", q.rows),
            ));
        }
        let (out, lse) = attention::varlen_attention(q, k, v, bounds, shape, self.precision);
        Ok((
            self.finish(out),
            CpuTensor::new(lse, q.rows, shape.num_heads),
        ))
    }

    fn varlen_attention_backward(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        out: &CpuTensor,
        lse: &CpuTensor,
        d_out: &CpuTensor,
        bounds: &[usize],
        shape: AttentionShape,
    ) -> Result<(CpuTensor, CpuTensor, CpuTensor)> {
        Ok(attention::varlen_attention_backward(
            q, k, v, out, &lse.data, d_out, bounds, shape,
        ))
    }

    fn swiglu_backward(
        &self,
        gate: &CpuTensor,
        up: &CpuTensor,
        dy: &CpuTensor,
    ) -> Result<(CpuTensor, CpuTensor)> {
        Ok(activation::swiglu_backward(gate, up, dy))
    }

    fn embedding_backward(&self, ids: &[u32], dy: &CpuTensor, dw: &mut Vec<f32>) -> Result<()> {
        let h = dy.cols;
        for (r, &id) in ids.iter().enumerate() {
            let row = dw
                .get_mut(id as usize * h..(id as usize + 1) * h)
                .ok_or_else(|| {
                    shape_err("embedding_backward", format!("id {id} outside the table"))
                })?;
            row.iter_mut().zip(dy.row(r)).for_each(|(a, b)| *a += b);
        }
        Ok(())
    }

    fn cross_entropy(
        &self,
        h: &CpuTensor,
        w: &CpuWeight,
        targets: &[u32],
        weights: &[f32],
        normalizer: f32,
        dw: &mut Vec<f32>,
    ) -> Result<(f64, Vec<f32>, CpuTensor)> {
        let data = f32_data(w)?;
        check_len("cross_entropy", dw, data.len())?;
        if targets.len() != h.rows || weights.len() != h.rows {
            return Err(shape_err(
                "cross_entropy",
                "targets/weights do not match the rows".into(),
            ));
        }
        let vocab = w.rows();
        if let Some((t, _)) = targets
            .iter()
            .zip(weights)
            .find(|(t, wt)| **wt != 0.0 && **t as usize >= vocab)
        {
            return Err(Error::InvalidInput(format!(
                "target id {t} outside the vocabulary ({vocab})"
            )));
        }
        let out = loss::fused_linear_cross_entropy(
            h,
            data,
            vocab,
            targets,
            weights,
            normalizer,
            dw,
            self.precision,
        );
        Ok((out.loss, out.token_losses, out.d_hidden))
    }

    fn target_log_probs(&self, h: &CpuTensor, w: &CpuWeight, targets: &[u32]) -> Result<Vec<f32>> {
        let vocab = w.rows();
        if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "target id {t} outside the vocabulary ({vocab})"
            )));
        }
        Ok(loss::target_log_probs(h, w, targets, self.precision))
    }

    fn weight_to_host(&self, w: &CpuWeight) -> Result<Vec<f32>> {
        Ok(w.to_f32())
    }

    fn grad_to_host(&self, g: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(g.clone())
    }

    fn opt_state_to_host(&self, s: &(Vec<f32>, Vec<f32>)) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(s.clone())
    }

    fn opt_state_from_host(
        &self,
        w: &CpuWeight,
        m: &[f32],
        v: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = w.rows() * w.cols();
        if m.len() != n || v.len() != n {
            return Err(shape_err(
                "opt_state_from_host",
                format!("moments of {} / {} elements for {n}", m.len(), v.len()),
            ));
        }
        Ok((m.to_vec(), v.to_vec()))
    }
}
