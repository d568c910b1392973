//! The cuBLAS entry points asyncthink's backend calls: a handle bound to a stream and
//! `cublasGemmEx` with bf16 (or f32) operands, f32 accumulation and output in bf16 or f32, with
//! cuBLAS's exact column-major transpose and leading-dimension semantics. A product on a
//! captured stream is recorded into the graph, as cuBLAS's kernels would be.

use std::ffi::c_void;

use rayon::prelude::*;

use crate::state::{State, Work, code, report, state};

const STATUS_SUCCESS: u32 = 0;
const STATUS_INVALID_VALUE: u32 = 7;
const STATUS_EXECUTION_FAILED: u32 = 13;
const STATUS_NOT_SUPPORTED: u32 = 15;

const CUDA_R_32F: u32 = 0;
const CUDA_R_16BF: u32 = 14;
const CUBLAS_COMPUTE_32F: u32 = 68;
const OP_N: u32 = 0;
const OP_T: u32 = 1;

#[unsafe(no_mangle)]
pub extern "C" fn cublasCreate_v2(handle: *mut *mut c_void) -> u32 {
    if handle.is_null() {
        return STATUS_INVALID_VALUE;
    }
    let id = state().id();
    // SAFETY: checked non-null; the caller passes a place for one handle.
    unsafe { *handle = id as *mut c_void };
    STATUS_SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cublasDestroy_v2(handle: *mut c_void) -> u32 {
    state().blas_streams.remove(&(handle as usize));
    STATUS_SUCCESS
}

/// The handle's products go to `stream`: run at once, or recorded while it is captured.
#[unsafe(no_mangle)]
pub extern "C" fn cublasSetStream_v2(handle: *mut c_void, stream: *mut c_void) -> u32 {
    state()
        .blas_streams
        .insert(handle as usize, stream as usize);
    STATUS_SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cublasSetMathMode(_handle: *mut c_void, _mode: u32) -> u32 {
    STATUS_SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cublasSetWorkspace_v2(
    _handle: *mut c_void,
    _ws: *mut c_void,
    _bytes: usize,
) -> u32 {
    STATUS_SUCCESS
}

fn elem_bytes(ty: u32) -> Option<usize> {
    match ty {
        CUDA_R_16BF => Some(2),
        CUDA_R_32F => Some(4),
        _ => None,
    }
}

fn load(bytes: &[u8], ty: u32, i: usize) -> f32 {
    if ty == CUDA_R_16BF {
        f32::from_bits((u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]) as u32) << 16)
    } else {
        f32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    }
}

/// `a · b` summed in 16 interleaved partial sums, then pairwise: an order the compiler can
/// vectorize, and the same for every call of one length.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let split = a.len() / 16 * 16;
    for (x, y) in a[..split].chunks_exact(16).zip(b[..split].chunks_exact(16)) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in a[split..].iter().zip(&b[split..]).enumerate() {
        acc[i] += x * y;
    }
    let mut width = 16;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

/// Bytes of a column-major operand with `cols` columns of leading dimension `ld`.
fn extent(rows: usize, cols: usize, ld: usize, elem: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        ((cols - 1) * ld + rows) * elem
    }
}

/// One `cublasGemmEx`, checked, ready to run now or when a captured graph replays.
#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    transa: u32,
    transb: u32,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
    a: u64,
    a_type: u32,
    lda: usize,
    b: u64,
    b_type: u32,
    ldb: usize,
    c: u64,
    c_type: u32,
    ldc: usize,
}

/// `C = alpha · op(A) · op(B) + beta · C`, column-major: C is m×n (ldc), op(A) m×k, op(B) k×n.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn cublasGemmEx(
    handle: *mut c_void,
    transa: u32,
    transb: u32,
    m: i32,
    n: i32,
    k: i32,
    alpha: *const c_void,
    a: *const c_void,
    a_type: u32,
    lda: i32,
    b: *const c_void,
    b_type: u32,
    ldb: i32,
    beta: *const c_void,
    c: *mut c_void,
    c_type: u32,
    ldc: i32,
    compute: u32,
    _algo: i32,
) -> u32 {
    if [a_type, b_type, c_type]
        .iter()
        .any(|&t| elem_bytes(t).is_none())
    {
        report(
            "cublasGemmEx",
            format!("data types {a_type}/{b_type}/{c_type}: only CUDA_R_16BF and CUDA_R_32F"),
        );
        return STATUS_NOT_SUPPORTED;
    }
    if compute != CUBLAS_COMPUTE_32F
        || ![OP_N, OP_T].contains(&transa)
        || ![OP_N, OP_T].contains(&transb)
    {
        report(
            "cublasGemmEx",
            format!(
                "compute type {compute}, ops {transa}/{transb}: only CUBLAS_COMPUTE_32F with N/T"
            ),
        );
        return STATUS_NOT_SUPPORTED;
    }
    if m < 0 || n < 0 || k < 0 || lda < 1 || ldb < 1 || ldc < 1 || alpha.is_null() || beta.is_null()
    {
        return STATUS_INVALID_VALUE;
    }
    let (m, n, k) = (m as usize, n as usize, k as usize);
    let (lda, ldb, ldc) = (lda as usize, ldb as usize, ldc as usize);
    let a_rows = if transa == OP_N { m } else { k };
    let b_rows = if transb == OP_N { k } else { n };
    if lda < a_rows || ldb < b_rows || ldc < m {
        return STATUS_INVALID_VALUE;
    }
    // SAFETY: CUBLAS_COMPUTE_32F takes alpha and beta as host f32 (pointer mode host, the
    // default, which nothing changes); both are non-null.
    let (alpha, beta) = unsafe { (*(alpha as *const f32), *(beta as *const f32)) };
    let g = Gemm {
        transa,
        transb,
        m,
        n,
        k,
        alpha,
        beta,
        a: a as u64,
        a_type,
        lda,
        b: b as u64,
        b_type,
        ldb,
        c: c as u64,
        c_type,
        ldc,
    };
    let mut st = state();
    let stream = st
        .blas_streams
        .get(&(handle as usize))
        .copied()
        .unwrap_or(0);
    match st.submit(stream, Work::Gemm(g)) {
        code::SUCCESS => STATUS_SUCCESS,
        _ => STATUS_EXECUTION_FAILED,
    }
}

pub fn run_gemm(st: &mut State, g: &Gemm) -> u32 {
    let Gemm {
        transa,
        transb,
        m,
        n,
        k,
        alpha,
        beta,
        a_type,
        lda,
        b_type,
        ldb,
        c_type,
        ldc,
        ..
    } = *g;
    if m == 0 || n == 0 {
        return code::SUCCESS;
    }
    let (ea, eb, ec) = (
        elem_bytes(a_type).unwrap_or(2),
        elem_bytes(b_type).unwrap_or(2),
        elem_bytes(c_type).unwrap_or(2),
    );
    let (a_rows, a_cols) = if transa == OP_N { (m, k) } else { (k, m) };
    let (b_rows, b_cols) = if transb == OP_N { (k, n) } else { (n, k) };
    let mem = &st.dev.mem;
    let operands = mem
        .bytes(g.a, extent(a_rows, a_cols, lda, ea))
        .and_then(|av| Ok((av, mem.bytes(g.b, extent(b_rows, b_cols, ldb, eb))?)))
        .and_then(|(av, bv)| Ok((av, bv, mem.bytes(g.c, extent(m, n, ldc, ec))?.to_vec())));
    let (av, bv, mut cv) = match operands {
        Ok(x) => x,
        Err(e) => {
            report("cublasGemmEx", e);
            return code::ILLEGAL_ADDRESS;
        }
    };
    let a_index = |i: usize, l: usize| {
        if transa == OP_N {
            i + l * lda
        } else {
            l + i * lda
        }
    };
    let b_index = |l: usize, j: usize| {
        if transb == OP_N {
            l + j * ldb
        } else {
            j + l * ldb
        }
    };
    // B by columns and A by rows, as f32 and contiguous over k, so each element of C is one
    // dot product of two slices in a fixed order (whatever the thread count). A (the weight
    // in the forward products, with up to 151 936 rows) is converted a few rows at a time,
    // never whole.
    let b_cols: Vec<f32> = (0..n)
        .flat_map(|j| (0..k).map(move |l| load(bv, b_type, b_index(l, j))))
        .collect();
    const ROWS: usize = 32;
    let row_blocks: Vec<Vec<f32>> = (0..m.div_ceil(ROWS))
        .into_par_iter()
        .map(|blk| {
            let rows = blk * ROWS..((blk + 1) * ROWS).min(m);
            let mut a_rows = vec![0f32; rows.len() * k];
            for (r, i) in rows.clone().enumerate() {
                for (l, x) in a_rows[r * k..(r + 1) * k].iter_mut().enumerate() {
                    *x = load(av, a_type, a_index(i, l));
                }
            }
            let mut out = vec![0f32; rows.len() * n];
            for r in 0..rows.len() {
                let a_row = &a_rows[r * k..(r + 1) * k];
                for j in 0..n {
                    out[r * n + j] = dot(a_row, &b_cols[j * k..(j + 1) * k]);
                }
            }
            out
        })
        .collect();
    for (blk, out) in row_blocks.iter().enumerate() {
        for (r, row) in out.chunks_exact(n).enumerate() {
            let i = blk * ROWS + r;
            for (j, &acc) in row.iter().enumerate() {
                let at = i + j * ldc;
                // beta = 0 means C is not read at all (it may hold NaNs), as in BLAS.
                let v = if beta == 0.0 {
                    alpha * acc
                } else {
                    alpha * acc + beta * load(&cv, c_type, at)
                };
                if c_type == CUDA_R_16BF {
                    let h = asyncthink_emu::exec::float::bf16_rn(v);
                    cv[2 * at..2 * at + 2].copy_from_slice(&h.to_le_bytes());
                } else {
                    cv[4 * at..4 * at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    match st.dev.write(g.c, &cv) {
        Ok(()) => code::SUCCESS,
        Err(e) => {
            report("cublasGemmEx", e);
            code::ILLEGAL_ADDRESS
        }
    }
}
