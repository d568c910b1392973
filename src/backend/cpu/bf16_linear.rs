//! `y = x · Wᵀ` with bf16 operands and f32 accumulation: the `--precision bf16` product.
//!
//! x is rounded to bf16 (round to nearest even) and multiplied by W's bf16 values (an f32
//! weight, a training master, is rounded the same way into the packed copy). Which kernel
//! runs is decided once per process, by the CPU:
//! - AMX tiles (`amx.rs`) where the CPU has AMX-BF16: W packed in k-pair panels;
//! - otherwise the portable f32 kernel (`packed.rs`) on the rounded values, whose fma chain
//!   is exact on bf16 products and so computes the same numbers on any CPU.
//!
//! Each kernel reduces every output in one order for every row count, so the bf16 path is
//! batch-invariant like the f32 one; the two kernels differ from each other in the last
//! bits (AMX flushes subnormals, and its accumulation is the hardware's), which is why the
//! choice is per process and never per call.

use half::bf16;
use rayon::prelude::*;

use super::amx;
use super::packed::{self, NR, OutPtr, Packed};
use super::precision::{Precision, bf16_bits_slice};

/// Panels every row of a task passes over before the next (64 KiB each at k = 1024).
const CACHE_PANELS: usize = 4;
/// Rows per parallel task.
const TASK_ROWS: usize = 64;

/// Which bf16 kernel this process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    Amx,
    Portable,
}

impl Bf16Kernel {
    /// The fastest kernel this CPU runs.
    pub fn best() -> Bf16Kernel {
        if amx::available() {
            Bf16Kernel::Amx
        } else {
            Bf16Kernel::Portable
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Amx => "amx-bf16",
            Bf16Kernel::Portable => "portable (f32 fma on bf16 values)",
        }
    }
}

/// W rounded to bf16 and packed for one kernel.
#[derive(Debug, Clone)]
pub enum Bf16Panels {
    /// `[n/16][k_pad/2][16][2]`: AMX's B-tile layout, k zero-padded to `amx::KSTEP`.
    Tiles { data: Vec<u16>, n: usize, k: usize },
    /// The f32 kernel's k-major panels, of bf16 values.
    Widened(Packed<bf16>),
}

/// A weight element that rounds to bf16.
pub trait ToBf16: Copy + Send + Sync {
    fn to_bf16(self) -> bf16;
}

impl ToBf16 for f32 {
    fn to_bf16(self) -> bf16 {
        bf16::from_f32(self)
    }
}

impl ToBf16 for bf16 {
    fn to_bf16(self) -> bf16 {
        self
    }
}

impl Bf16Panels {
    /// Packs row-major `w` `[n, k]` for `kernel`.
    pub fn new<W: ToBf16>(w: &[W], n: usize, k: usize, kernel: Bf16Kernel) -> Self {
        assert_eq!(w.len(), n * k, "packing a [{n}, {k}] weight");
        match kernel {
            Bf16Kernel::Portable => {
                let rounded: Vec<bf16> = w.par_iter().map(|v| v.to_bf16()).collect();
                Bf16Panels::Widened(Packed::new(&rounded, n, k))
            }
            Bf16Kernel::Amx => {
                let k_pad = k.next_multiple_of(amx::KSTEP);
                let mut data = vec![0u16; n.div_ceil(NR) * k_pad * NR];
                data.par_chunks_mut(k_pad * NR)
                    .enumerate()
                    .for_each(|(p, panel)| {
                        for j in 0..NR.min(n - p * NR) {
                            let row = &w[(p * NR + j) * k..][..k];
                            for (kk, v) in row.iter().enumerate() {
                                panel[(kk / 2) * 2 * NR + 2 * j + kk % 2] = v.to_bf16().to_bits();
                            }
                        }
                    });
                Bf16Panels::Tiles { data, n, k }
            }
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Bf16Panels::Tiles { n, .. } => *n,
            Bf16Panels::Widened(p) => p.rows(),
        }
    }
}

/// `x` `[m, k]` rounded to bf16, times the bf16 `Wᵀ`: `[m, n]` in f32.
pub fn linear(x: &[f32], m: usize, w: &Bf16Panels) -> Vec<f32> {
    match w {
        Bf16Panels::Widened(p) => {
            let mut rounded = x.to_vec();
            Precision::Bf16.round(&mut rounded);
            packed::linear(&rounded, m, p)
        }
        Bf16Panels::Tiles { data, n, k } => amx_linear(x, m, data, *n, *k),
    }
}

pub use super::precision::round_bf16 as round;

fn amx_linear(x: &[f32], m: usize, w: &[u16], n: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "linear: x is not [{m}, {k}]");
    assert!(amx::available(), "AMX panels on a CPU without AMX");
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    let k_pad = k.next_multiple_of(amx::KSTEP);
    let mut a = vec![0u16; m * k_pad];
    a.par_chunks_mut(k_pad)
        .zip(x.par_chunks(k.max(1)))
        .for_each(|(dst, src)| bf16_bits_slice(src, &mut dst[..src.len()]));
    let block = amx::Block { a: &a, k_pad, w, n };
    let panels = n.div_ceil(NR);
    let threads = rayon::current_num_threads();
    let row_blocks = m.div_ceil(TASK_ROWS);
    let groups = (4 * threads).div_ceil(row_blocks).clamp(1, panels);
    let per_group = panels.div_ceil(groups);
    let dst = OutPtr(out.as_mut_ptr());
    (0..row_blocks * groups).into_par_iter().for_each(|task| {
        let (rb, g) = (task / groups, task % groups);
        let rows = rb * TASK_ROWS..((rb + 1) * TASK_ROWS).min(m);
        let ps = g * per_group..((g + 1) * per_group).min(panels);
        if ps.is_empty() {
            return;
        }
        // SAFETY: AMX is available (asserted); `out` is m×n and outlives the loop; this
        // task writes rows `rows` × the columns of panels `ps` only.
        unsafe { block.run(rows, ps, CACHE_PANELS, dst.get()) };
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_util::rand_vec;

    fn kernels() -> Vec<Bf16Kernel> {
        let mut ks = vec![Bf16Kernel::Portable];
        if amx::available() {
            ks.push(Bf16Kernel::Amx);
        } else {
            eprintln!("AMX kernel not tested: this CPU has no AMX-BF16");
        }
        ks
    }

    /// The bf16 product written out: bf16 operands, one f32 chain over k in order.
    fn chain(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f32;
                for kk in 0..k {
                    acc = round(x[i * k + kk]).mul_add(round(w[j * k + kk]), acc);
                }
                out[i * n + j] = acc;
            }
        }
        out
    }

    #[test]
    fn each_kernel_is_the_bf16_product_in_k_order() {
        // Odd n (a padded panel), k not a multiple of the tile's 32, m across every
        // tile shape (1..16 rows, 17..32, several row tiles and tasks).
        let (k, n) = (75, 53);
        let w = rand_vec(n * k, 1);
        for kernel in kernels() {
            let panels = Bf16Panels::new(&w, n, k, kernel);
            for m in [1, 2, 7, 16, 17, 31, 32, 33, 97, 200] {
                let x = rand_vec(m * k, m as u32);
                let got = linear(&x, m, &panels);
                let want = chain(&x, m, k, &w, n);
                // AMX's own accumulation may differ from a sequential chain in the last
                // bits; it must stay within a few ulps of the f32 sum of bf16 products.
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    let tol = match kernel {
                        Bf16Kernel::Portable => 0.0,
                        Bf16Kernel::Amx => 1e-5 * (1.0 + e.abs()),
                    };
                    assert!(
                        (g - e).abs() <= tol,
                        "{kernel:?} m={m} output {i}: {g} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_batch() {
        let (k, n) = (96, 40);
        let w = rand_vec(n * k, 9);
        let all = rand_vec(150 * k, 3);
        for kernel in kernels() {
            let panels = Bf16Panels::new(&w, n, k, kernel);
            let full = linear(&all, 150, &panels);
            for (start, len) in [
                (0, 1),
                (17, 1),
                (5, 6),
                (100, 50),
                (149, 1),
                (3, 97),
                (40, 20),
            ] {
                let part = linear(&all[start * k..(start + len) * k], len, &panels);
                assert_eq!(
                    part,
                    full[start * n..(start + len) * n],
                    "{kernel:?} rows {start}..+{len}"
                );
            }
        }
    }
}
