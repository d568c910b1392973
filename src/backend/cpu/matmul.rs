//! `y = x · Wᵀ` on the CPU, W stored `[n, k]` row-major as in Hugging Face checkpoints,
//! and the two products of its backward.
//!
//! The forward is the packed kernel (`packed.rs`) for every row count: decode, batched
//! decode, prefill and the trainer's forward all reduce each output in one order, so a
//! token's numbers do not depend on how it was batched. The `gemm` crate remains for the
//! backward's products (gradients need no such guarantee) and as the comparison
//! benches/matmul.rs measures the packed kernel against.

use rayon::prelude::*;

use super::{CpuWeight, Precision, bf16_linear};

/// Rows of W widened to f32 at a time on the gemm path (keeps the panel in L2/L3).
const PANEL_ROWS: usize = 256;

/// `x · Wᵀ` at `precision`: the f32 packed kernel, or bf16 operands with f32 accumulation.
pub fn linear(x: &[f32], m: usize, k: usize, w: &CpuWeight, precision: Precision) -> Vec<f32> {
    let n = w.rows();
    debug_assert_eq!(x.len(), m * k);
    debug_assert_eq!(w.cols(), k);
    match (w, precision) {
        (CpuWeight::F32 { data, packed, .. }, Precision::F32) => {
            super::packed::linear(x, m, packed.get(data, n, k))
        }
        (CpuWeight::Bf16 { data, packed, .. }, Precision::F32) => {
            super::packed::linear(x, m, packed.get(data, n, k))
        }
        (CpuWeight::F32 { data, packed, .. }, Precision::Bf16) => {
            bf16_linear::linear(x, m, packed.get_bf16(data, n, k))
        }
        (CpuWeight::Bf16 { data, packed, .. }, Precision::Bf16) => {
            bf16_linear::linear(x, m, packed.get_bf16(data, n, k))
        }
    }
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

/// The same product through the `gemm` crate, whose reduction order depends on the shape:
/// the comparison benches/matmul.rs runs, not a path the model takes.
pub fn linear_gemm(x: &[f32], m: usize, k: usize, n: usize, w: &CpuWeight) -> Vec<f32> {
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

/// Backward of `linear` for its input: dx[m, k] = dy[m, n] · W[n, k].
pub fn linear_backward_input(dy: &[f32], m: usize, n: usize, w: &[f32], k: usize) -> Vec<f32> {
    let mut dx = vec![0f32; m * k];
    if m == 0 {
        return dx;
    }
    // SAFETY: dst m×k row-major; lhs dy m×n row-major; rhs W n×k row-major.
    unsafe {
        gemm::gemm(
            m,
            k,
            n,
            dx.as_mut_ptr(),
            1,
            k as isize,
            false,
            dy.as_ptr(),
            1,
            n as isize,
            w.as_ptr(),
            1,
            k as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        );
    }
    dx
}

/// Backward of `linear` for its weight, accumulated: dw[n, k] += dy[m, n]ᵀ · x[m, k].
pub fn linear_backward_weight(dy: &[f32], m: usize, n: usize, x: &[f32], k: usize, dw: &mut [f32]) {
    if m == 0 {
        return;
    }
    debug_assert_eq!(dw.len(), n * k);
    // SAFETY: dst n×k row-major; lhs dyᵀ is n×m read from dy m×n (rs=1, cs=n); rhs x m×k.
    unsafe {
        gemm::gemm(
            n,
            k,
            m,
            dw.as_mut_ptr(),
            1,
            k as isize,
            true,
            dy.as_ptr(),
            n as isize,
            1,
            x.as_ptr(),
            1,
            k as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        );
    }
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

fn parallelism() -> gemm::Parallelism {
    gemm::Parallelism::Rayon(rayon::current_num_threads())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_util::rand_vec;
    use half::bf16;

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

    #[test]
    fn linear_and_gemm_match_f64_reference_for_both_dtypes() {
        for &(m, k, n) in &[
            (1, 67, 130),
            (3, 128, 65),
            (16, 96, 300),
            (17, 200, 513),
            (40, 33, 7),
            (130, 64, 40),
        ] {
            let x = rand_vec(m * k, (m * 31 + k) as u32);
            let w = rand_vec(n * k, (n * 7 + k) as u32);
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wb_wide: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            for (name, weight, values) in [
                ("f32", CpuWeight::f32(w.clone(), vec![n, k]), &w),
                ("bf16", CpuWeight::bf16(wb, vec![n, k]), &wb_wide),
            ] {
                let want = reference(&x, m, k, values, n);
                for (path, got) in [
                    ("packed", linear(&x, m, k, &weight, Precision::F32)),
                    ("gemm", linear_gemm(&x, m, k, n, &weight)),
                ] {
                    for (a, b) in got.iter().zip(&want) {
                        assert!(
                            (a - b).abs() < 1e-4,
                            "{name} {path} m={m} k={k} n={n}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn backward_products_match_definitions() {
        let (m, k, n) = (5, 7, 3);
        let x = rand_vec(m * k, 1);
        let w = rand_vec(n * k, 2);
        let dy = rand_vec(m * n, 3);
        let dx = linear_backward_input(&dy, m, n, &w, k);
        let mut dw = vec![1.0f32; n * k];
        linear_backward_weight(&dy, m, n, &x, k, &mut dw);
        for i in 0..m {
            for t in 0..k {
                let want: f32 = (0..n).map(|j| dy[i * n + j] * w[j * k + t]).sum();
                assert!((dx[i * k + t] - want).abs() < 1e-5);
            }
        }
        for j in 0..n {
            for t in 0..k {
                let want: f32 = 1.0 + (0..m).map(|i| dy[i * n + j] * x[i * k + t]).sum::<f32>();
                assert!((dw[j * k + t] - want).abs() < 1e-5, "accumulates into dw");
            }
        }
    }

    #[test]
    fn a_row_is_the_same_in_any_batch_and_after_the_weight_changes() {
        let (k, n) = (96, 50);
        let x = rand_vec(80 * k, 5);
        let mut w = CpuWeight::f32(rand_vec(n * k, 9), vec![n, k]);
        let batched = linear(&x, 80, k, &w, Precision::F32);
        for i in [0, 1, 63, 64, 79] {
            let single = linear(&x[i * k..(i + 1) * k], 1, k, &w, Precision::F32);
            assert_eq!(&batched[i * n..(i + 1) * n], &single[..], "row {i}");
        }
        // A changed weight must not be read through its stale packed copy.
        if let CpuWeight::F32 { data, packed, .. } = &mut w {
            data.iter_mut().for_each(|v| *v = -*v);
            packed.clear();
        }
        let negated = linear(&x, 80, k, &w, Precision::F32);
        assert!(negated.iter().zip(&batched).all(|(a, b)| *a == -*b));
    }
}
