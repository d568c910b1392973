//! `y = x · Wᵀ` with one reduction order for every output, however many rows there are.
//!
//! W `[n, k]` is packed once into panels of `NR` outputs, k-major (`[n/NR][k][NR]`), so a
//! register tile can load the `NR` weights of one k at once and broadcast one activation
//! against them. Every output is then a single chain of fused multiply-adds over k in
//! order, from +0: `acc = fma(x[k], w[k], acc)`. The tile shape (how many rows and panels
//! are computed together, which the row count picks) only decides which chains run side
//! by side, never the order within one. So a row's outputs are bitwise the same alone, in
//! a batch of 64, in a prefill chunk or in the trainer's forward; and since `f32::mul_add`
//! is exact, the portable body and every instruction set agree bit for bit too.

use rayon::prelude::*;

use super::dot::Widen;

/// Outputs per panel: two AVX2 registers (one AVX-512 register) of f32.
pub const NR: usize = 16;

/// Rows of activations per register tile on the bulk path: 4 rows x 2 registers = 8
/// accumulators, as many FMA chains as AVX2's two FMA units keep in flight. (6 rows, 12
/// accumulators, spilled and ran at a third of the speed.)
const MR: usize = 4;

/// Panels every row of a task passes over before the next ones (64 KiB of bf16 weights
/// at k = 1024): they stay in L2 instead of streaming from memory once per row tile.
const CACHE_PANELS: usize = 4;

/// Rows per parallel task: their activations (k f32 each) stay in L2 while they pass
/// over each group of panels.
const TASK_ROWS: usize = 64;

/// W packed into `NR`-output panels, k-major; the last panel is zero-padded.
#[derive(Debug, Clone)]
pub struct Packed<W> {
    data: Vec<W>,
    n: usize,
    k: usize,
}

impl<W: Widen + Default> Packed<W> {
    /// Packs row-major `w` `[n, k]`.
    pub fn new(w: &[W], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "packing a [{n}, {k}] weight");
        let panels = n.div_ceil(NR);
        let mut data = vec![W::default(); panels * k * NR];
        if k > 0 {
            data.par_chunks_mut(k * NR)
                .enumerate()
                .for_each(|(p, panel)| {
                    for jj in 0..NR.min(n - p * NR) {
                        let row = &w[(p * NR + jj) * k..][..k];
                        for (kk, &v) in row.iter().enumerate() {
                            panel[kk * NR + jj] = v;
                        }
                    }
                });
        }
        Packed { data, n, k }
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    fn panel(&self, p: usize) -> &[[W; NR]] {
        self.data[p * self.k * NR..(p + 1) * self.k * NR]
            .as_chunks::<NR>()
            .0
    }
}

/// Output pointer shared by tasks that write disjoint blocks (here and in bf16_linear.rs).
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: each task writes only its own block of rows and panels.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `x` `[m, k]` times `Wᵀ`: `[m, n]`.
pub fn linear<W: Widen + Default>(x: &[f32], m: usize, w: &Packed<W>) -> Vec<f32> {
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), m * k, "linear: x is not [{m}, {k}]");
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    let block = kernel::<W>();
    // Tasks over (row block, panel group): enough for every thread even at one row.
    let threads = rayon::current_num_threads();
    let row_blocks = m.div_ceil(TASK_ROWS);
    let groups = (4 * threads).div_ceil(row_blocks).clamp(1, w.panels());
    let per_group = w.panels().div_ceil(groups);
    let dst = OutPtr(out.as_mut_ptr());
    (0..row_blocks * groups).into_par_iter().for_each(|task| {
        let (rb, g) = (task / groups, task % groups);
        let rows = rb * TASK_ROWS..((rb + 1) * TASK_ROWS).min(m);
        let panels = g * per_group..((g + 1) * per_group).min(w.panels());
        // SAFETY: `out` is m×n and outlives the loop; this task writes rows `rows`, columns
        // of `panels` only, a region no other task writes.
        unsafe { block(x, k, rows, w, panels, dst.get(), n) };
    });
    out
}

/// One task's block of rows against a range of panels.
type Block<W> = unsafe fn(
    &[f32],
    usize,
    std::ops::Range<usize>,
    &Packed<W>,
    std::ops::Range<usize>,
    *mut f32,
    usize,
);

/// The register tile: rows `r0..r0+R` against panels `p0..p0+P`, every output one fma
/// chain over k.
///
/// # Safety
/// `out` must point at an `[m, n]` f32 buffer covering rows `r0..r0+R`.
#[inline(always)]
// Index loops over the constant tile bounds are what the vectorizer unrolls.
#[allow(clippy::needless_range_loop)]
unsafe fn tile<W: Widen + Default, const R: usize, const P: usize>(
    x: &[f32],
    k: usize,
    r0: usize,
    w: &Packed<W>,
    p0: usize,
    out: *mut f32,
    n: usize,
) {
    let xs: [&[f32]; R] = std::array::from_fn(|r| &x[(r0 + r) * k..][..k]);
    let panels: [&[[W; NR]]; P] = std::array::from_fn(|p| w.panel(p0 + p));
    let mut acc = [[[0f32; NR]; P]; R];
    for kk in 0..k {
        let mut wide = [[0f32; NR]; P];
        for p in 0..P {
            let src = &panels[p][kk];
            for l in 0..NR {
                wide[p][l] = src[l].widen();
            }
        }
        for r in 0..R {
            let a = xs[r][kk];
            for p in 0..P {
                for l in 0..NR {
                    acc[r][p][l] = a.mul_add(wide[p][l], acc[r][p][l]);
                }
            }
        }
    }
    for r in 0..R {
        for p in 0..P {
            let c0 = (p0 + p) * NR;
            let width = NR.min(n - c0);
            // SAFETY: row r0+r is inside `out` (the caller's promise) and c0+width <= n.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.add((r0 + r) * n + c0), width) };
            dst.copy_from_slice(&acc[r][p][..width]);
        }
    }
}

/// Panels `panels` in steps of P with the R-row tile, the rest one at a time.
///
/// # Safety
/// As `tile`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn sweep<W: Widen + Default, const R: usize, const P: usize>(
    x: &[f32],
    k: usize,
    r0: usize,
    w: &Packed<W>,
    panels: std::ops::Range<usize>,
    out: *mut f32,
    n: usize,
) {
    let mut p = panels.start;
    // SAFETY (all calls): forwarded from the caller.
    while p + P <= panels.end {
        unsafe { tile::<W, R, P>(x, k, r0, w, p, out, n) };
        p += P;
    }
    while p < panels.end {
        unsafe { tile::<W, R, 1>(x, k, r0, w, p, out, n) };
        p += 1;
    }
}

/// Rows `rows` against panels `panels`, a few panels at a time so they stay in cache
/// while every row passes over them: full `MR`-row tiles, then the leftover rows with a
/// tile that runs more panels side by side so the FMA units stay fed.
///
/// # Safety
/// `out` must point at the `[m, n]` output and `rows` lie inside it.
#[inline(always)]
unsafe fn block_body<W: Widen + Default>(
    x: &[f32],
    k: usize,
    rows: std::ops::Range<usize>,
    w: &Packed<W>,
    panels: std::ops::Range<usize>,
    out: *mut f32,
    n: usize,
) {
    let mut p = panels.start;
    while p < panels.end {
        let chunk = p..(p + CACHE_PANELS).min(panels.end);
        let mut r = rows.start;
        // SAFETY (all calls): forwarded from the caller; every tile stays within `rows`.
        unsafe {
            while r + MR <= rows.end {
                sweep::<W, MR, 1>(x, k, r, w, chunk.clone(), out, n);
                r += MR;
            }
            match rows.end - r {
                0 => {}
                1 => sweep::<W, 1, 4>(x, k, r, w, chunk.clone(), out, n),
                2 => sweep::<W, 2, 2>(x, k, r, w, chunk.clone(), out, n),
                _ => sweep::<W, 3, 1>(x, k, r, w, chunk.clone(), out, n),
            }
        }
        p = chunk.end;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block<W: Widen + Default>(
        x: &[f32],
        k: usize,
        rows: std::ops::Range<usize>,
        w: &Packed<W>,
        panels: std::ops::Range<usize>,
        out: *mut f32,
        n: usize,
    ) {
        // SAFETY: forwarded; the caller checked avx2 and fma.
        unsafe { block_body(x, k, rows, w, panels, out, n) }
    }
}

/// The block body compiled for the best instruction set found; every one computes the
/// same function.
fn kernel<W: Widen + Default>() -> Block<W> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return avx2::block::<W>;
        }
    }
    block_body::<W>
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_util::rand_vec;
    use half::bf16;

    /// The defining order, written out: one fma chain per output.
    fn chain(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f32;
                for kk in 0..k {
                    acc = x[i * k + kk].mul_add(w[j * k + kk], acc);
                }
                out[i * n + j] = acc;
            }
        }
        out
    }

    #[test]
    fn every_shape_is_the_fma_chain_bit_for_bit() {
        // Odd n (a padded panel), k not a multiple of anything, m across every tile shape.
        let (k, n) = (37, 53);
        let w = rand_vec(n * k, 1);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let wb_wide: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
        let (pf, pb) = (Packed::new(&w, n, k), Packed::new(&wb, n, k));
        for m in [1, 2, 3, 4, 5, 6, 7, 11, 13, 97, 200] {
            let x = rand_vec(m * k, m as u32);
            assert_eq!(linear(&x, m, &pf), chain(&x, m, k, &w, n), "f32, m={m}");
            assert_eq!(
                linear(&x, m, &pb),
                chain(&x, m, k, &wb_wide, n),
                "bf16, m={m}"
            );
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_batch() {
        let (k, n) = (64, 40);
        let w = Packed::new(&rand_vec(n * k, 9), n, k);
        let all = rand_vec(150 * k, 3);
        let full = linear(&all, 150, &w);
        for (start, len) in [(0, 1), (17, 1), (5, 6), (100, 50), (149, 1), (3, 97)] {
            let part = linear(&all[start * k..(start + len) * k], len, &w);
            assert_eq!(
                part,
                full[start * n..(start + len) * n],
                "rows {start}..+{len}"
            );
        }
    }
}
