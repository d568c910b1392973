//! AdamW over every parameter, with weight-decay exclusions, global-norm clipping,
//! gradient accumulation and a warmup + cosine learning-rate schedule.

use serde::{Deserialize, Serialize};

use super::grad::Gradients;
use crate::backend::{AdamWStep, TrainBackend};
use crate::model::Qwen3;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimConfig {
    pub lr: f32,
    /// Final learning rate as a fraction of `lr` at the end of the cosine.
    pub min_lr_ratio: f32,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Norm weights never decay (standard practice: decaying a gain toward 0 is harmful).
    /// Embeddings decay unless this is set.
    pub no_decay_embeddings: bool,
    /// Clip the global gradient norm to this (0 disables).
    pub max_grad_norm: f32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 10,
            total_steps: 100,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.01,
            no_decay_embeddings: true,
            max_grad_norm: 1.0,
        }
    }
}

impl OptimConfig {
    /// Names the first bad setting and its rule (NaN fails every rule).
    pub fn validate(&self) -> Result<()> {
        let unit = |x: f32| (0.0..1.0).contains(&x);
        let non_negative = |x: f32| x.is_finite() && x >= 0.0;
        let checks = [
            (
                "lr",
                self.lr,
                self.lr.is_finite() && self.lr > 0.0,
                "must be finite and > 0",
            ),
            ("beta1", self.beta1, unit(self.beta1), "must be in [0, 1)"),
            ("beta2", self.beta2, unit(self.beta2), "must be in [0, 1)"),
            (
                "eps",
                self.eps,
                self.eps.is_finite() && self.eps > 0.0,
                "must be finite and > 0",
            ),
            (
                "weight_decay",
                self.weight_decay,
                non_negative(self.weight_decay),
                "must be finite and >= 0",
            ),
            (
                "max_grad_norm",
                self.max_grad_norm,
                non_negative(self.max_grad_norm),
                "must be finite and >= 0",
            ),
            (
                "min_lr_ratio",
                self.min_lr_ratio,
                (0.0..=1.0).contains(&self.min_lr_ratio),
                "must be in [0, 1]",
            ),
        ];
        match checks.iter().find(|c| !c.2) {
            Some((name, v, _, rule)) => Err(Error::InvalidInput(format!(
                "optimizer setting {name} {v}: {rule}"
            ))),
            None => Ok(()),
        }
    }

    /// Linear warmup to `lr`, then cosine down to `lr * min_lr_ratio` at `total_steps`.
    /// `step` counts from 1.
    pub fn lr_at(&self, step: u64) -> f32 {
        if step <= self.warmup_steps {
            return self.lr * step as f32 / self.warmup_steps.max(1) as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f32 / span as f32).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f32::consts::PI * progress).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }

    fn decays(&self, name: &str) -> bool {
        let is_norm = name.ends_with("norm.weight") || name.ends_with("layernorm.weight");
        let is_embedding = name == "model.embed_tokens.weight";
        !(is_norm || (is_embedding && self.no_decay_embeddings))
    }
}

/// Optimizer state for every parameter, in `Qwen3::parameters()` order.
pub struct AdamW<B: TrainBackend> {
    pub config: OptimConfig,
    pub states: Vec<B::OptState>,
    /// Optimizer steps taken.
    pub step: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepReport {
    pub lr: f32,
    /// Before clipping.
    pub grad_norm: f64,
}

impl<B: TrainBackend> AdamW<B> {
    pub fn new(model: &Qwen3<B>, config: OptimConfig) -> Result<Self> {
        config.validate()?;
        let states = model
            .parameters()
            .into_iter()
            .map(|(_, w)| model.backend.new_opt_state(w))
            .collect::<Result<_>>()?;
        Ok(AdamW {
            config,
            states,
            step: 0,
        })
    }

    /// One update from `grads`, which hold the sum over `accumulated` micro-batches' losses
    /// each already normalized per micro-batch; they are averaged here.
    pub fn step(
        &mut self,
        model: &mut Qwen3<B>,
        grads: &Gradients<B>,
        accumulated: usize,
    ) -> Result<StepReport> {
        let avg = 1.0 / accumulated.max(1) as f32;
        let grad_norm = grads.global_norm(&model.backend)? * avg as f64;
        if !grad_norm.is_finite() {
            return Err(Error::InvalidInput(format!(
                "gradient norm is {grad_norm}: skipping would hide a diverged run"
            )));
        }
        let clip =
            if self.config.max_grad_norm > 0.0 && grad_norm > self.config.max_grad_norm as f64 {
                (self.config.max_grad_norm as f64 / grad_norm) as f32
            } else {
                1.0
            };
        self.step += 1;
        let lr = self.config.lr_at(self.step);
        let names: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
        let backend = model.backend_handle();
        for (((w, g), s), name) in model
            .parameters_mut()
            .into_iter()
            .zip(&grads.grads)
            .zip(&mut self.states)
            .zip(&names)
        {
            let hp = AdamWStep {
                lr,
                beta1: self.config.beta1,
                beta2: self.config.beta2,
                eps: self.config.eps,
                weight_decay: if self.config.decays(name) {
                    self.config.weight_decay
                } else {
                    0.0
                },
                grad_scale: avg * clip,
                step: self.step,
            };
            backend.adamw(w, g, s, &hp)?;
        }
        Ok(StepReport { lr, grad_norm })
    }
}

impl<B: TrainBackend> AdamW<B> {
    /// Writes both moments of every parameter as a safetensors file (`<name>.exp_avg`,
    /// `<name>.exp_avg_sq`).
    pub fn write_moments(&self, model: &Qwen3<B>, path: &std::path::Path) -> Result<()> {
        let b = &model.backend;
        let mut moments = Vec::new();
        for ((name, w), s) in model.parameters().into_iter().zip(&self.states) {
            let (m, v) = b.opt_state_to_host(s)?;
            moments.push((format!("{name}.exp_avg"), b.weight_shape(w), m));
            moments.push((format!("{name}.exp_avg_sq"), b.weight_shape(w), v));
        }
        crate::model::save::write_safetensors(path, &moments)
    }

    /// Restores the moments written by `write_moments` and the step count.
    pub fn load_moments(
        &mut self,
        model: &Qwen3<B>,
        path: &std::path::Path,
        step: u64,
    ) -> Result<()> {
        let file = crate::model::checkpoint::Checkpoint::open_file(path)?;
        for ((name, w), s) in model.parameters().into_iter().zip(self.states.iter_mut()) {
            let shape = model.backend.weight_shape(w);
            let m = file
                .get_shaped(&format!("{name}.exp_avg"), &shape)?
                .to_f32();
            let v = file
                .get_shaped(&format!("{name}.exp_avg_sq"), &shape)?
                .to_f32();
            *s = model.backend.opt_state_from_host(w, &m, &v)?;
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_follows_a_cosine() {
        let c = OptimConfig {
            lr: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        assert!((c.lr_at(1) - 0.1).abs() < 1e-6);
        assert!((c.lr_at(10) - 1.0).abs() < 1e-6);
        assert!(
            (c.lr_at(60) - 0.55).abs() < 1e-5,
            "half way down the cosine"
        );
        assert!((c.lr_at(110) - 0.1).abs() < 1e-6);
        assert!((c.lr_at(500) - 0.1).abs() < 1e-6, "flat after the end");
    }

    #[test]
    fn norms_never_decay_and_embeddings_by_option() {
        let c = OptimConfig::default();
        assert!(!c.decays("model.layers.0.input_layernorm.weight"));
        assert!(!c.decays("model.layers.3.self_attn.q_norm.weight"));
        assert!(!c.decays("model.norm.weight"));
        assert!(!c.decays("model.embed_tokens.weight"));
        assert!(c.decays("model.layers.0.mlp.up_proj.weight"));
        let c = OptimConfig {
            no_decay_embeddings: false,
            ..c
        };
        assert!(c.decays("model.embed_tokens.weight"));
    }
}
