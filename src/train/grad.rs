//! The loss and every parameter's gradient, written once over `TrainBackend`.
//!
//! Forward keeps what each layer's backward needs (or, with activation checkpointing,
//! only each layer's input, recomputing the rest during backward). The backward walks
//! the same path in reverse:
//! CE ← final norm ← N × (MLP ← post-norm ← attention ← q/k norm+RoPE ← input norm) ← embedding.

use super::batch::TrainBatch;
use crate::backend::TrainBackend;
use crate::model::Qwen3;
use crate::{Error, Result};

/// What a layer's backward reads.
struct Saved<B: TrainBackend> {
    h_in: B::Tensor,
    a: B::Tensor,
    q_pre: B::Tensor,
    k_pre: B::Tensor,
    q: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
    attn: B::Tensor,
    lse: B::Stats,
    h_mid: B::Tensor,
    b: B::Tensor,
    gate: B::Tensor,
    up: B::Tensor,
    act: B::Tensor,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LossReport {
    /// Σ wₜ·CEₜ / normalizer.
    pub loss: f64,
    /// Unweighted cross-entropy of every row (0 where the weight is 0).
    pub token_losses: Vec<f32>,
}

/// Gradient buffers aligned with `Qwen3::parameters()`.
pub struct Gradients<B: TrainBackend> {
    pub grads: Vec<B::Grad>,
}

impl<B: TrainBackend> Gradients<B> {
    pub fn zeros(model: &Qwen3<B>) -> Result<Self> {
        let grads = model
            .parameters()
            .into_iter()
            .map(|(_, w)| model.backend.zeros_grad(w))
            .collect::<Result<_>>()?;
        Ok(Gradients { grads })
    }

    pub fn zero(&mut self, backend: &B) -> Result<()> {
        self.grads.iter_mut().try_for_each(|g| backend.fill_zero(g))
    }

    pub fn global_norm(&self, backend: &B) -> Result<f64> {
        let mut sq = 0.0;
        for g in &self.grads {
            sq += backend.grad_sq_norm(g)?;
        }
        Ok(sq.sqrt())
    }
}

const PER_LAYER: usize = 11;

fn layer_forward<B: TrainBackend>(
    model: &Qwen3<B>,
    l: usize,
    h_in: B::Tensor,
    batch: &TrainBatch,
) -> Result<(B::Tensor, Saved<B>)> {
    let b = &model.backend;
    let layer = &model.layers[l];
    let eps = model.config.rms_norm_eps;
    let shape = model.attention_shape();
    let a = b.rms_norm(&h_in, &layer.input_norm, eps)?;
    let q_pre = b.linear(&a, &layer.q_proj)?;
    let k_pre = b.linear(&a, &layer.k_proj)?;
    let v = b.linear(&a, &layer.v_proj)?;
    let (mut q, mut k) = (b.copy(&q_pre)?, b.copy(&k_pre)?);
    b.qk_norm_rope(
        &mut q,
        &mut k,
        &layer.q_norm,
        &layer.k_norm,
        shape,
        eps,
        &model.rope,
        &batch.positions,
    )?;
    let (attn, lse) = b.varlen_attention(&q, &k, &v, &batch.bounds, shape)?;
    let mut h_mid = b.linear(&attn, &layer.o_proj)?;
    b.add_assign(&mut h_mid, &h_in)?;
    let bn = b.rms_norm(&h_mid, &layer.post_attention_norm, eps)?;
    let gate = b.linear(&bn, &layer.gate_proj)?;
    let up = b.linear(&bn, &layer.up_proj)?;
    let act = b.swiglu(&gate, &up)?;
    let mut h_out = b.linear(&act, &layer.down_proj)?;
    b.add_assign(&mut h_out, &h_mid)?;
    let saved = Saved {
        h_in,
        a,
        q_pre,
        k_pre,
        q,
        k,
        v,
        attn,
        lse,
        h_mid,
        b: bn,
        gate,
        up,
        act,
    };
    Ok((h_out, saved))
}

/// Returns dL/dh_in given dL/dh_out, adding this layer's parameter gradients.
fn layer_backward<B: TrainBackend>(
    model: &Qwen3<B>,
    l: usize,
    s: &Saved<B>,
    d_out: B::Tensor,
    batch: &TrainBatch,
    grads: &mut [B::Grad],
) -> Result<B::Tensor> {
    let b = &model.backend;
    let layer = &model.layers[l];
    let eps = model.config.rms_norm_eps;
    let shape = model.attention_shape();
    // Parameter slots in `parameters()` order: see Layer::named.
    let [
        g_in,
        g_q,
        g_k,
        g_v,
        g_o,
        g_qn,
        g_kn,
        g_post,
        g_gate,
        g_up,
        g_down,
    ] = grads
    else {
        return Err(Error::InvalidInput(
            "gradient slots do not match the layer".into(),
        ));
    };

    // MLP: h_out = h_mid + down(swiglu(gate(bn), up(bn))), bn = norm(h_mid).
    let d_act = b.linear_backward(&s.act, &layer.down_proj, &d_out, g_down)?;
    let (d_gate, d_up) = b.swiglu_backward(&s.gate, &s.up, &d_act)?;
    let mut d_bn = b.linear_backward(&s.b, &layer.gate_proj, &d_gate, g_gate)?;
    b.add_assign(
        &mut d_bn,
        &b.linear_backward(&s.b, &layer.up_proj, &d_up, g_up)?,
    )?;
    let mut d_mid =
        b.rms_norm_backward(&s.h_mid, &layer.post_attention_norm, &d_bn, eps, g_post)?;
    b.add_assign(&mut d_mid, &d_out)?;

    // Attention: h_mid = h_in + o(attn(rope(norm(q(a))), rope(norm(k(a))), v(a))), a = norm(h_in).
    let d_attn = b.linear_backward(&s.attn, &layer.o_proj, &d_mid, g_o)?;
    let (dq, dk, dv) = b.varlen_attention_backward(
        &s.q,
        &s.k,
        &s.v,
        &s.attn,
        &s.lse,
        &d_attn,
        &batch.bounds,
        shape,
    )?;
    let (dq_pre, dk_pre) = b.qk_norm_rope_backward(
        &s.q_pre,
        &s.k_pre,
        dq,
        dk,
        &layer.q_norm,
        &layer.k_norm,
        g_qn,
        g_kn,
        shape,
        eps,
        &model.rope,
        &batch.positions,
    )?;
    let mut d_a = b.linear_backward(&s.a, &layer.q_proj, &dq_pre, g_q)?;
    b.add_assign(
        &mut d_a,
        &b.linear_backward(&s.a, &layer.k_proj, &dk_pre, g_k)?,
    )?;
    b.add_assign(&mut d_a, &b.linear_backward(&s.a, &layer.v_proj, &dv, g_v)?)?;
    let mut d_in = b.rms_norm_backward(&s.h_in, &layer.input_norm, &d_a, eps, g_in)?;
    b.add_assign(&mut d_in, &d_mid)?;
    Ok(d_in)
}

/// Loss over `batch` (Σ wₜ·CEₜ / `normalizer`) and its gradient, added into `grads`.
/// `checkpointing` keeps only each layer's input and recomputes the rest in backward.
pub fn loss_and_grad<B: TrainBackend>(
    model: &Qwen3<B>,
    batch: &TrainBatch,
    normalizer: f32,
    grads: &mut Gradients<B>,
    checkpointing: bool,
) -> Result<LossReport> {
    let b = &model.backend;
    let n_layers = model.layers.len();
    if grads.grads.len() != 2 + n_layers * PER_LAYER + usize::from(model.lm_head.is_some()) {
        return Err(Error::InvalidInput(
            "gradients were made for another model".into(),
        ));
    }
    if !(normalizer.is_finite() && normalizer > 0.0) {
        return Err(Error::InvalidInput(format!(
            "loss normalizer must be positive, got {normalizer}"
        )));
    }
    let vocab = model.config.vocab_size;
    if let Some(t) = batch.ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::InvalidInput(format!(
            "token id {t} is outside the vocabulary (size {vocab})"
        )));
    }

    let mut h = b.embedding(&model.embed_tokens, &batch.ids)?;
    let mut saved: Vec<Option<Saved<B>>> = Vec::with_capacity(n_layers);
    let mut inputs: Vec<Option<B::Tensor>> = Vec::with_capacity(n_layers);
    for l in 0..n_layers {
        if checkpointing {
            // Keep only the input; recompute from it in backward.
            let (h_out, s) = layer_forward(model, l, h, batch)?;
            inputs.push(Some(s.h_in));
            saved.push(None);
            h = h_out;
        } else {
            let (h_out, s) = layer_forward(model, l, h, batch)?;
            saved.push(Some(s));
            inputs.push(None);
            h = h_out;
        }
    }
    let eps = model.config.rms_norm_eps;
    let final_in = h;
    let f = b.rms_norm(&final_in, &model.final_norm, eps)?;

    let head_slot = if model.lm_head.is_some() {
        2 + n_layers * PER_LAYER
    } else {
        0
    };
    let head = model.lm_head.as_ref().unwrap_or(&model.embed_tokens);
    let (loss, token_losses, d_f) = b.cross_entropy(
        &f,
        head,
        &batch.targets,
        &batch.weights,
        normalizer,
        &mut grads.grads[head_slot],
    )?;
    if !loss.is_finite() {
        return Err(Error::InvalidInput(format!(
            "loss is {loss}: the model or the data produced non-finite values"
        )));
    }

    let norm_slot = 1 + n_layers * PER_LAYER;
    let mut d = b.rms_norm_backward(
        &final_in,
        &model.final_norm,
        &d_f,
        eps,
        &mut grads.grads[norm_slot],
    )?;
    for l in (0..n_layers).rev() {
        let s = match saved[l].take() {
            Some(s) => s,
            None => {
                let h_in = inputs[l]
                    .take()
                    .ok_or_else(|| Error::InvalidInput("missing checkpointed input".into()))?;
                layer_forward(model, l, h_in, batch)?.1
            }
        };
        let slots = &mut grads.grads[1 + l * PER_LAYER..1 + (l + 1) * PER_LAYER];
        d = layer_backward(model, l, &s, d, batch, slots)?;
    }
    b.embedding_backward(&batch.ids, &d, &mut grads.grads[0])?;
    Ok(LossReport { loss, token_losses })
}

/// log p(target) of every row of `batch` under the current parameters, forward only
/// (GRPO's ratio numerator, and the sampler/trainer agreement check).
pub fn target_log_probs<B: TrainBackend>(model: &Qwen3<B>, batch: &TrainBatch) -> Result<Vec<f32>> {
    let b = &model.backend;
    let vocab = model.config.vocab_size;
    if let Some(t) = batch.ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::InvalidInput(format!(
            "token id {t} is outside the vocabulary (size {vocab})"
        )));
    }
    let mut h = b.embedding(&model.embed_tokens, &batch.ids)?;
    for l in 0..model.layers.len() {
        h = layer_forward(model, l, h, batch)?.0;
    }
    let f = b.rms_norm(&h, &model.final_norm, model.config.rms_norm_eps)?;
    b.target_log_probs(
        &f,
        model.lm_head.as_ref().unwrap_or(&model.embed_tokens),
        &batch.targets,
    )
}
