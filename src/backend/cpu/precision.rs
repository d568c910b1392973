//! The CPU backend's arithmetic precision, a choice made per process (`--precision`).
//!
//! - `f32`: f32 activations and products, bf16 weights widened exactly: the reference the
//!   parity tests hold against transformers' f32 run.
//! - `bf16`: what transformers' bf16 run does on a CPU: every op's output is rounded to
//!   bf16 where that run stores a bf16 tensor (embeddings, norms, projections, RoPE,
//!   attention, the MLP product, the residual stream, the logits), and the dense products
//!   take bf16 operands with f32 accumulation on the CPU's bf16 units (`bf16_linear.rs`).
//!   Values stay in f32 buffers holding bf16-exact numbers, so every op keeps one layout.
//!
//! Both are batch-invariant: the choice changes which numbers come out, never whether a
//! token's numbers depend on its batch.

use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// `v` rounded to this precision (the identity for f32).
    #[inline(always)]
    pub fn r(self, v: f32) -> f32 {
        match self {
            Precision::F32 => v,
            Precision::Bf16 => super::bf16_linear::round(v),
        }
    }

    /// Rounds `xs` to this precision in place (a no-op for f32).
    pub fn round(self, xs: &mut [f32]) {
        if self == Precision::Bf16 {
            xs.par_iter_mut()
                .for_each(|v| *v = super::bf16_linear::round(*v));
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("{s:?} is not a precision (f32 or bf16)")),
        }
    }
}
