//! `y = x · Wᵀ` on the CPU, W stored `[n, k]` row-major as in Hugging Face checkpoints.
//!
//! Two paths, chosen by the number of rows m:
//! - m ≤ `SMALL_M` (decode): one SIMD dot product per (row, output), W streamed once
//!   from memory with bf16 widened in registers. Each output is a fixed-order
//!   reduction over k, so a row's result does not depend on what else is in the batch.
//! - larger m (prefill): the `gemm` crate; bf16 weights are widened to f32 a panel at a
//!   time so the full f32 copy of a large matrix never exists.

use half::bf16;
use rayon::prelude::*;

use super::CpuWeight;

pub const SMALL_M: usize = 16;

/// Rows of W per parallel task on the dot-product path: enough work per task to
/// amortize scheduling, enough tasks to balance across cores.
const DOT_TASK_ROWS: usize = 64;

/// Rows of W widened to f32 at a time on the gemm path (keeps the panel in L2/L3).
const PANEL_ROWS: usize = 256;

pub fn linear(x: &[f32], m: usize, k: usize, w: &CpuWeight) -> Vec<f32> {
    let n = w.rows();
    debug_assert_eq!(x.len(), m * k);
    debug_assert_eq!(w.cols(), k);
    if m == 0 {
        return Vec::new();
    }
    if m <= SMALL_M {
        linear_dot(x, m, k, n, w)
    } else {
        linear_gemm(x, m, k, n, w)
    }
}

fn linear_dot(x: &[f32], m: usize, k: usize, n: usize, w: &CpuWeight) -> Vec<f32> {
    // Computed transposed ([n, m]) so each task writes one contiguous range.
    let mut out_t = vec![0f32; n * m];
    let kernels = kernels();
    out_t
        .par_chunks_mut(DOT_TASK_ROWS * m)
        .enumerate()
        .for_each(|(task, chunk)| {
            let j0 = task * DOT_TASK_ROWS;
            for (jj, outs) in chunk.chunks_mut(m).enumerate() {
                let j = j0 + jj;
                for (i, o) in outs.iter_mut().enumerate() {
                    let xi = &x[i * k..(i + 1) * k];
                    *o = match w {
                        CpuWeight::F32 { data, .. } => {
                            (kernels.dot_f32)(xi, &data[j * k..(j + 1) * k])
                        }
                        CpuWeight::Bf16 { data, .. } => {
                            (kernels.dot_bf16)(xi, &data[j * k..(j + 1) * k])
                        }
                    };
                }
            }
        });
    if m == 1 {
        return out_t;
    }
    let mut out = vec![0f32; m * n];
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = out_t[j * m + i];
        }
    }
    out
}

/// Raw output pointer shared by tasks that write disjoint column panels.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only its own columns [j0, j0+rows) of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method (not field access) so closures capture the Send wrapper, not the raw pointer.
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn linear_gemm(x: &[f32], m: usize, k: usize, n: usize, w: &CpuWeight) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    match w {
        CpuWeight::F32 { data, .. } => {
            // SAFETY: dst is m×n row-major (rs=n, cs=1); lhs is x, m×k row-major; rhs is
            // Wᵀ, k×n, read from W [n,k] (rs=1, cs=k). All buffers have those extents.
            unsafe {
                gemm_f32(
                    out.as_mut_ptr(),
                    n,
                    x,
                    m,
                    k,
                    data.as_ptr(),
                    n,
                    parallelism(),
                );
            }
        }
        CpuWeight::Bf16 { data, .. } => {
            let dst = OutPtr(out.as_mut_ptr());
            data.par_chunks(PANEL_ROWS * k)
                .enumerate()
                .for_each(|(p, panel)| {
                    let rows = panel.len() / k;
                    let wide: Vec<f32> = panel.iter().map(|v| v.to_f32()).collect();
                    // SAFETY: this task writes columns [p*PANEL_ROWS, p*PANEL_ROWS+rows) of the
                    // m×n output, disjoint from every other task's; the panel is rows×k.
                    unsafe {
                        gemm_f32(
                            dst.get().add(p * PANEL_ROWS),
                            n,
                            x,
                            m,
                            k,
                            wide.as_ptr(),
                            rows,
                            gemm::Parallelism::None,
                        );
                    }
                });
        }
    }
    out
}

/// dst[m, cols] (row stride `dst_rs`) = x[m, k] · w[cols, k]ᵀ
///
/// # Safety
/// `dst` must be valid for writes at rows 0..m with stride `dst_rs` over `cols` columns,
/// and `w` for reads of `cols * k` elements.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    dst: *mut f32,
    dst_rs: usize,
    x: &[f32],
    m: usize,
    k: usize,
    w: *const f32,
    cols: usize,
    par: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller's contract; strides describe the extents above.
    unsafe {
        gemm::gemm(
            m,
            cols,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w,
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// SIMD dot product with the fixed reduction order used by every path here.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    (kernels().dot_f32)(a, b)
}

fn parallelism() -> gemm::Parallelism {
    gemm::Parallelism::Rayon(rayon::current_num_threads())
}

// ---------------------------------------------------------------------------------------
// Dot-product kernels, compiled for the best instruction set found at run time.

struct DotKernels {
    dot_f32: fn(&[f32], &[f32]) -> f32,
    dot_bf16: fn(&[f32], &[bf16]) -> f32,
}

fn kernels() -> &'static DotKernels {
    static K: std::sync::OnceLock<DotKernels> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return DotKernels {
                    dot_f32: x86::dot_f32_avx512,
                    dot_bf16: x86::dot_bf16_avx512,
                };
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return DotKernels {
                    dot_f32: x86::dot_f32_avx2,
                    dot_bf16: x86::dot_bf16_avx2,
                };
            }
        }
        DotKernels {
            dot_f32: dot_f32_portable,
            dot_bf16: dot_bf16_portable,
        }
    })
}

/// Lanes of independent partial sums: two 512-bit registers' worth, so consecutive FMAs
/// do not wait on each other. The same lane count on every ISA keeps results identical
/// across machines' instruction sets up to FMA contraction.
const LANES: usize = 32;

#[inline(always)]
fn dot_f32_body(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0f32; LANES];
    let (ac, ar) = a[..n].split_at(n - n % LANES);
    let (bc, br) = b[..n].split_at(n - n % LANES);
    for (x, y) in ac.chunks_exact(LANES).zip(bc.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    for (l, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[l] = x.mul_add(*y, acc[l]);
    }
    reduce(acc)
}

#[inline(always)]
fn widen(v: bf16) -> f32 {
    f32::from_bits((v.to_bits() as u32) << 16)
}

#[inline(always)]
fn dot_bf16_body(a: &[f32], b: &[bf16]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0f32; LANES];
    let (ac, ar) = a[..n].split_at(n - n % LANES);
    let (bc, br) = b[..n].split_at(n - n % LANES);
    for (x, y) in ac.chunks_exact(LANES).zip(bc.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] = x[l].mul_add(widen(y[l]), acc[l]);
        }
    }
    for (l, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[l] = x.mul_add(widen(*y), acc[l]);
    }
    reduce(acc)
}

/// Pairwise tree over the lanes: a fixed order, so results are reproducible.
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

fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_body(a, b)
}

fn dot_bf16_portable(a: &[f32], b: &[bf16]) -> f32 {
    dot_bf16_body(a, b)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    #[target_feature(enable = "avx512f")]
    unsafe fn dot_f32_avx512_impl(a: &[f32], b: &[f32]) -> f32 {
        dot_f32_body(a, b)
    }
    #[target_feature(enable = "avx512f")]
    unsafe fn dot_bf16_avx512_impl(a: &[f32], b: &[bf16]) -> f32 {
        dot_bf16_body(a, b)
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_f32_avx2_impl(a: &[f32], b: &[f32]) -> f32 {
        dot_f32_body(a, b)
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_bf16_avx2_impl(a: &[f32], b: &[bf16]) -> f32 {
        dot_bf16_body(a, b)
    }

    pub fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: selected only after is_x86_feature_detected!("avx512f").
        unsafe { dot_f32_avx512_impl(a, b) }
    }
    pub fn dot_bf16_avx512(a: &[f32], b: &[bf16]) -> f32 {
        // SAFETY: selected only after is_x86_feature_detected!("avx512f").
        unsafe { dot_bf16_avx512_impl(a, b) }
    }
    pub fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: selected only after detecting avx2 and fma.
        unsafe { dot_f32_avx2_impl(a, b) }
    }
    pub fn dot_bf16_avx2(a: &[f32], b: &[bf16]) -> f32 {
        // SAFETY: selected only after detecting avx2 and fma.
        unsafe { dot_bf16_avx2_impl(a, b) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                    .sum();
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn both_paths_match_f64_reference_for_both_dtypes() {
        for &(m, k, n) in &[
            (1, 67, 130),
            (3, 128, 65),
            (16, 96, 300),
            (17, 200, 513),
            (40, 33, 7),
        ] {
            let x = pseudo_random(m * k, (m * 31 + k) as u32);
            let w = pseudo_random(n * k, (n * 7 + k) as u32);
            let f32w = CpuWeight::F32 {
                data: w.clone(),
                shape: vec![n, k],
            };
            let want = reference(&x, m, k, &w, n);
            let got = linear(&x, m, k, &f32w);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "f32 m={m} k={k} n={n}: {a} vs {b}");
            }
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wb_wide: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            let want = reference(&x, m, k, &wb_wide, n);
            let got = linear(
                &x,
                m,
                k,
                &CpuWeight::Bf16 {
                    data: wb,
                    shape: vec![n, k],
                },
            );
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "bf16 m={m} k={k} n={n}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn small_path_is_batch_invariant() {
        let (k, n) = (96, 50);
        let x = pseudo_random(SMALL_M * k, 5);
        let w = CpuWeight::F32 {
            data: pseudo_random(n * k, 9),
            shape: vec![n, k],
        };
        let batched = linear(&x, SMALL_M, k, &w);
        for i in 0..SMALL_M {
            let single = linear(&x[i * k..(i + 1) * k], 1, k, &w);
            assert_eq!(&batched[i * n..(i + 1) * n], &single[..], "row {i}");
        }
    }
}
