//! The f32 dot product of the attention backward's scores, compiled for
//! the best instruction set found at run time (`simd.rs`), and `Widen`, the weight element types
//! the matrix kernels read.
//!
//! Every dot product accumulates in the same order: 32 independent lanes over k, then a
//! fixed pairwise tree, so each instruction set computes the same function and a score
//! does not depend on anything but its two vectors.

use half::bf16;

use super::simd::multiversion;

/// Partial sums per row: two 512-bit registers' worth, so consecutive FMAs don't wait.
const LANES: usize = 32;

pub trait Widen: Copy + Send + Sync + 'static {
    fn widen(self) -> f32;
}

impl Widen for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Widen for bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        // bf16 is the top half of an f32: a shift, which vectorizes.
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

#[inline(always)]
fn dot_body(x: &[f32], w: &[f32]) -> f32 {
    let n = w.len();
    let main = n - n % LANES;
    let mut acc = [0f32; LANES];
    // Fixed-size chunks: the compiler sees 32-wide bodies with no bounds checks inside.
    let x_chunks = x[..main].as_chunks::<LANES>().0;
    for (xc, wc) in x_chunks.iter().zip(w[..main].as_chunks::<LANES>().0) {
        for l in 0..LANES {
            acc[l] = xc[l].mul_add(wc[l], acc[l]);
        }
    }
    for c in main..n {
        acc[c - main] = x[c].mul_add(w[c], acc[c - main]);
    }
    reduce(acc)
}

#[inline(always)]
fn reduce(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0]
}

#[cfg(test)]
fn portable(x: &[f32], w: &[f32]) -> f32 {
    dot_body(x, w)
}

multiversion! {
    fn dot_best(x: &[f32], w: &[f32]) -> f32 = dot_body;
}

/// f32 dot product of `a` with the first `a.len()` elements of `b` (attention scores).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_best(a, &b[..a.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_instruction_set_computes_the_portable_function() {
        for k in [1, 31, 32, 33, 100, 1024] {
            let a: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k).map(|i| (i as f32 * 0.11).cos()).collect();
            assert_eq!(dot(&a, &b).to_bits(), portable(&a, &b).to_bits(), "k={k}");
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-4, "k={k}");
        }
    }
}
