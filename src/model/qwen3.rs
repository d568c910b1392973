//! Qwen3, written once over the `Backend` trait. The data path reads top to bottom:
//! embed → N × (norm → attention → residual → norm → SwiGLU MLP → residual) → norm → lm_head.

use std::path::Path;

use super::batch::ForwardBatch;
use super::checkpoint::Checkpoint;
use super::config::Qwen3Config;
use super::rope::Rope;
use crate::backend::{AttentionShape, Backend, StepContext};
use crate::kv::KvLayout;
use crate::{Error, Result};

pub struct Layer<B: Backend> {
    pub input_norm: B::Weight,
    pub q_proj: B::Weight,
    pub k_proj: B::Weight,
    pub v_proj: B::Weight,
    pub o_proj: B::Weight,
    pub q_norm: B::Weight,
    pub k_norm: B::Weight,
    pub post_attention_norm: B::Weight,
    pub gate_proj: B::Weight,
    pub up_proj: B::Weight,
    pub down_proj: B::Weight,
}

impl<B: crate::backend::TrainBackend> Qwen3<B> {
    /// Loads a model whose weights training will update: f32 master copies whatever the
    /// checkpoint's dtype.
    pub fn load_for_training(backend: B, dir: &Path) -> Result<Self> {
        let config = Qwen3Config::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        Self::from_checkpoint_with(backend, config, &ckpt, |b, t| b.load_master_weight(t))
    }
}

impl<B: Backend> Layer<B> {
    /// Parameters with their names inside a layer, in checkpoint order.
    pub fn named(&self) -> [(&'static str, &B::Weight); 11] {
        [
            ("input_layernorm.weight", &self.input_norm),
            ("self_attn.q_proj.weight", &self.q_proj),
            ("self_attn.k_proj.weight", &self.k_proj),
            ("self_attn.v_proj.weight", &self.v_proj),
            ("self_attn.o_proj.weight", &self.o_proj),
            ("self_attn.q_norm.weight", &self.q_norm),
            ("self_attn.k_norm.weight", &self.k_norm),
            ("post_attention_layernorm.weight", &self.post_attention_norm),
            ("mlp.gate_proj.weight", &self.gate_proj),
            ("mlp.up_proj.weight", &self.up_proj),
            ("mlp.down_proj.weight", &self.down_proj),
        ]
    }

    /// The same order as `named`.
    pub fn named_mut(&mut self) -> [&mut B::Weight; 11] {
        [
            &mut self.input_norm,
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
            &mut self.q_norm,
            &mut self.k_norm,
            &mut self.post_attention_norm,
            &mut self.gate_proj,
            &mut self.up_proj,
            &mut self.down_proj,
        ]
    }
}

pub struct Qwen3<B: Backend> {
    pub config: Qwen3Config,
    pub backend: B,
    pub embed_tokens: B::Weight,
    /// None when the embeddings are tied: logits use `embed_tokens`.
    pub lm_head: Option<B::Weight>,
    pub layers: Vec<Layer<B>>,
    pub final_norm: B::Weight,
    pub rope: Rope,
}

impl<B: Backend> Qwen3<B> {
    /// Loads `config.json` and the safetensors weights of a Hugging Face model directory.
    pub fn load(backend: B, dir: &Path) -> Result<Self> {
        let config = Qwen3Config::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        Self::from_checkpoint(backend, config, &ckpt)
    }

    pub fn from_checkpoint(backend: B, config: Qwen3Config, ckpt: &Checkpoint) -> Result<Self> {
        Self::from_checkpoint_with(backend, config, ckpt, |b, t| b.load_weight(t))
    }

    /// As `from_checkpoint`, with `load` deciding how each tensor is stored (training
    /// keeps f32 master weights whatever the checkpoint's dtype).
    pub fn from_checkpoint_with(
        backend: B,
        config: Qwen3Config,
        ckpt: &Checkpoint,
        load: impl Fn(&B, &super::checkpoint::HostTensor<'_>) -> Result<B::Weight>,
    ) -> Result<Self> {
        let c = &config;
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let check = super::checkpoint::weight_check();
        let get = |name: &str, shape: &[usize]| -> Result<B::Weight> {
            let t = ckpt.get_shaped(name, shape)?;
            // A NaN weight would only show later as NaN logits (JSON nulls, garbage tokens).
            if check {
                t.check_finite()?;
            }
            load(&backend, &t)
        };
        let embed_tokens = get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(get("lm_head.weight", &[c.vocab_size, h])?)
        };
        let layers = (0..c.num_hidden_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                Ok(Layer {
                    input_norm: get(&format!("{p}.input_layernorm.weight"), &[h])?,
                    q_proj: get(&format!("{p}.self_attn.q_proj.weight"), &[c.q_dim(), h])?,
                    k_proj: get(&format!("{p}.self_attn.k_proj.weight"), &[c.kv_dim(), h])?,
                    v_proj: get(&format!("{p}.self_attn.v_proj.weight"), &[c.kv_dim(), h])?,
                    o_proj: get(&format!("{p}.self_attn.o_proj.weight"), &[h, c.q_dim()])?,
                    q_norm: get(&format!("{p}.self_attn.q_norm.weight"), &[d])?,
                    k_norm: get(&format!("{p}.self_attn.k_norm.weight"), &[d])?,
                    post_attention_norm: get(
                        &format!("{p}.post_attention_layernorm.weight"),
                        &[h],
                    )?,
                    gate_proj: get(&format!("{p}.mlp.gate_proj.weight"), &[i, h])?,
                    up_proj: get(&format!("{p}.mlp.up_proj.weight"), &[i, h])?,
                    down_proj: get(&format!("{p}.mlp.down_proj.weight"), &[h, i])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = get("model.norm.weight", &[h])?;
        let rope = Rope::new(d, c.rope_theta);
        Ok(Qwen3 {
            config,
            backend,
            embed_tokens,
            lm_head,
            layers,
            final_norm,
            rope,
        })
    }

    /// Every parameter with its Hugging Face name, in a fixed order (tied embeddings once).
    pub fn parameters(&self) -> Vec<(String, &B::Weight)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed_tokens)];
        for (l, layer) in self.layers.iter().enumerate() {
            for (name, w) in layer.named() {
                out.push((format!("model.layers.{l}.{name}"), w));
            }
        }
        out.push(("model.norm.weight".to_string(), &self.final_norm));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), head));
        }
        out
    }

    /// The backend, cloned so it can be used while the weights are borrowed mutably.
    pub fn backend_handle(&self) -> B
    where
        B: Clone,
    {
        self.backend.clone()
    }

    /// `parameters`, mutable, same order.
    pub fn parameters_mut(&mut self) -> Vec<&mut B::Weight> {
        let mut out = vec![&mut self.embed_tokens];
        for layer in &mut self.layers {
            out.extend(layer.named_mut());
        }
        out.push(&mut self.final_norm);
        if let Some(head) = &mut self.lm_head {
            out.push(head);
        }
        out
    }

    pub fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            num_heads: self.config.num_attention_heads,
            num_kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
        }
    }

    pub fn kv_layout(&self, num_blocks: usize, block_size: usize) -> KvLayout {
        KvLayout {
            num_layers: self.config.num_hidden_layers,
            num_blocks,
            block_size,
            num_kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// One step over a mixed batch: writes every token's K/V into the cache and returns
    /// logits `[batch.logits_rows.len(), vocab]`. The backend decides how the step runs
    /// (`Backend::forward_step`: the CUDA backend replays graphs of pure-decode steps).
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut B::KvCache) -> Result<B::Tensor> {
        if batch.token_ids.is_empty() {
            return Err(Error::InvalidInput("forward of an empty batch".into()));
        }
        let ctx = StepContext {
            weights: self.weight_refs(),
            model_key: self.launch_key(),
            max_model_len: self.config.max_position_embeddings,
            vocab_size: self.config.vocab_size,
            attention: self.attention_shape(),
            rope_inv_freq: &self.rope.inv_freq,
        };
        self.backend
            .forward_step(batch, kv, &ctx, &mut |b, kv| self.forward_eager(b, kv))
    }

    /// Every parameter, in `parameters`' order, without the names.
    fn weight_refs(&self) -> Vec<&B::Weight> {
        let mut out = Vec::with_capacity(2 + 11 * self.layers.len());
        out.push(&self.embed_tokens);
        for layer in &self.layers {
            out.extend(layer.named().map(|(_, w)| w));
        }
        out.push(&self.final_norm);
        out.extend(self.lm_head.as_ref());
        out
    }

    /// A hash of the scalars the forward bakes into its launches: the config and the RoPE
    /// frequencies (a captured graph is only replayed for the model it was captured from).
    fn launch_key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{:?}", self.config).hash(&mut h);
        for f in &self.rope.inv_freq {
            f.to_bits().hash(&mut h);
        }
        h.finish()
    }

    /// The forward op by op, always (what `forward` runs unless the backend replays a graph).
    pub fn forward_eager(&self, batch: &ForwardBatch, kv: &mut B::KvCache) -> Result<B::Tensor> {
        if batch.token_ids.is_empty() {
            return Err(Error::InvalidInput("forward of an empty batch".into()));
        }
        let b = &self.backend;
        let eps = self.config.rms_norm_eps;
        let shape = self.attention_shape();

        let mut residual = b.embedding(&self.embed_tokens, &batch.token_ids)?;
        let mut x = b.rms_norm(&residual, &self.layers[0].input_norm, eps)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let mut q = b.linear(&x, &layer.q_proj)?;
            let mut k = b.linear(&x, &layer.k_proj)?;
            let v = b.linear(&x, &layer.v_proj)?;
            b.qk_norm_rope_write_kv(
                &mut q,
                &mut k,
                &v,
                &layer.q_norm,
                &layer.k_norm,
                shape,
                eps,
                &self.rope,
                batch,
                kv,
                l,
            )?;
            let attn = b.attention(&q, kv, l, batch, shape)?;
            let attn_out = b.linear(&attn, &layer.o_proj)?;
            x = b.add_rms_norm(&mut residual, &attn_out, &layer.post_attention_norm, eps)?;

            let gate = b.linear(&x, &layer.gate_proj)?;
            let up = b.linear(&x, &layer.up_proj)?;
            let mlp_out = b.linear(&b.swiglu(&gate, &up)?, &layer.down_proj)?;
            // The next layer's input norm (or the final norm) is fused with this residual add.
            let next_norm = self
                .layers
                .get(l + 1)
                .map_or(&self.final_norm, |n| &n.input_norm);
            x = b.add_rms_norm(&mut residual, &mlp_out, next_norm, eps)?;
        }
        let rows = b.gather_rows(&x, &batch.logits_rows)?;
        b.linear(&rows, self.lm_head.as_ref().unwrap_or(&self.embed_tokens))
    }
}
