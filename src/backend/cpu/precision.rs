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

use super::simd::multiversion;

/// Elements per task when a whole tensor rounds: enough to amortize a rayon task.
const ROUND_CHUNK: usize = 1 << 14;

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
            Precision::Bf16 => round_bf16(v),
        }
    }

    /// Rounds `xs` to this precision in place (a no-op for f32).
    pub fn round(self, xs: &mut [f32]) {
        if self != Precision::Bf16 {
            return;
        }
        if xs.len() <= ROUND_CHUNK {
            round_slice(xs);
        } else {
            xs.par_chunks_mut(ROUND_CHUNK).for_each(round_slice);
        }
    }
}

/// The bits of `v` rounded to the nearest bf16, ties to even; a NaN stays a (quiet) NaN.
/// Branch-free so loops over it vectorize; the same function as `half::bf16::from_f32`.
#[inline(always)]
pub fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let quiet_nan = (b >> 16) | 0x40;
    (if v.is_nan() { quiet_nan } else { rounded }) as u16
}

/// `v` rounded to the nearest bf16 (ties to even), as f32.
#[inline(always)]
pub fn round_bf16(v: f32) -> f32 {
    f32::from_bits((bf16_bits(v) as u32) << 16)
}

#[inline(always)]
fn round_slice_body(xs: &mut [f32]) {
    for v in xs {
        *v = round_bf16(*v);
    }
}

multiversion! {
    fn round_slice(xs: &mut [f32]) = round_slice_body;
}

#[inline(always)]
fn bf16_bits_slice_body(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16_bits(s);
    }
}

multiversion! {
    /// `dst[i] = bf16_bits(src[i])`: a row of activations as bf16 operands.
    pub fn bf16_bits_slice(src: &[f32], dst: &mut [u16]) = bf16_bits_slice_body;
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

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn bf16_rounding_is_halfs_on_every_edge() {
        let mut cases: Vec<u32> = vec![
            0,
            0x8000_0000,
            0x0000_8000,
            0x0001_8000,
            0x0000_7fff,
            0x0001_0000,
            0x3f80_8000,
            0x3f81_8000,
            0x3f80_8001,
            0x7f7f_ffff,
            0xff7f_ffff,
            0x7f80_0000,
            0xff80_0000,
            0x7f80_0001,
            0x7fc0_0000,
            0xffff_ffff,
            0x7fff_ffff,
            0x0000_0001,
            0x807f_ffff,
        ];
        // A deterministic spread over all bit patterns.
        let mut x = 0x1234_5678u32;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            cases.push(x);
        }
        let values: Vec<f32> = cases.iter().map(|&b| f32::from_bits(b)).collect();
        let mut bits = vec![0u16; values.len()];
        bf16_bits_slice(&values, &mut bits);
        let mut rounded = values.clone();
        Precision::Bf16.round(&mut rounded);
        for ((&v, &b), &r) in values.iter().zip(&bits).zip(&rounded) {
            let want = bf16::from_f32(v).to_bits();
            assert_eq!(bf16_bits(v), want, "{:#010x}", v.to_bits());
            assert_eq!(b, want, "slice {:#010x}", v.to_bits());
            assert_eq!(
                r.to_bits(),
                (want as u32) << 16,
                "round {:#010x}",
                v.to_bits()
            );
        }
    }
}
