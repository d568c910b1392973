//! The dense products of the model, row-major, through `cublasGemmEx`: bf16 inputs, f32
//! accumulation, and a bf16 or f32 output (f32 where the result accumulates over steps or
//! chunks: weight gradients, the cross-entropy's logits and hidden-state gradient).
//!
//! cuBLAS is column-major; a row-major `[r, c]` matrix is its column-major transpose, so each
//! product below is issued as the transpose of itself.

use cudarc::cublas::result::gemm_ex;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use super::device::{CudaBackend, cuda_err};
use crate::Result;

/// An element type cuBLAS may write.
pub trait GemmOutput {
    const DTYPE: cudaDataType;
}

impl GemmOutput for bf16 {
    const DTYPE: cudaDataType = cudaDataType::CUDA_R_16BF;
}

impl GemmOutput for f32 {
    const DTYPE: cudaDataType = cudaDataType::CUDA_R_32F;
}

/// Which row-major product: `m` rows of the activation, `n` rows of the weight `[n, k]`.
#[derive(Debug, Clone, Copy)]
pub enum Product {
    /// `Y[m, n] = X[m, k] · W[n, k]ᵀ` (forward projection); a = W, b = X.
    XWt,
    /// `dX[m, k] = dY[m, n] · W[n, k]` (input gradient); a = W, b = dY.
    DyW,
    /// `dW[n, k] (+)= dY[m, n]ᵀ · X[m, k]` (weight gradient); a = X, b = dY.
    DyTX,
}

impl CudaBackend {
    /// `c = a ⊗ b + beta · c` for the product `p` of sizes (m, n, k); see [`Product`] for
    /// which operand is which.
    pub(super) fn gemm<T: GemmOutput>(
        &self,
        p: Product,
        (m, n, k): (usize, usize, usize),
        a: &impl DevicePtr<bf16>,
        b: &impl DevicePtr<bf16>,
        c: &mut impl DevicePtrMut<T>,
        beta: f32,
    ) -> Result<()> {
        use cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as TR};
        // (transa, transb, rows of C, cols of C, inner, lda, ldb, ldc), column-major.
        let (ta, tb, cm, cn, ck, lda, ldb, ldc) = match p {
            Product::XWt => (TR, N, n, m, k, k, k, n),
            Product::DyW => (N, N, k, m, n, k, n, k),
            Product::DyTX => (N, TR, k, n, m, k, n, k),
        };
        let (need_a, need_b, need_c) = match p {
            Product::XWt => (n * k, m * k, m * n),
            Product::DyW => (n * k, m * n, m * k),
            Product::DyTX => (m * k, m * n, n * k),
        };
        if a.len() < need_a || b.len() < need_b || c.len() < need_c {
            return Err(cuda_err(format!(
                "{p:?} gemm {m}x{n}x{k}: buffers of {}/{}/{} elements, need {need_a}/{need_b}/{need_c}",
                a.len(),
                b.len(),
                c.len()
            )));
        }
        if m == 0 || n == 0 || k == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (pa, _ra) = a.device_ptr(stream);
        let (pb, _rb) = b.device_ptr(stream);
        let (pc, _rc) = c.device_ptr_mut(stream);
        let alpha = 1.0f32;
        let to_i32 = |x: usize| {
            i32::try_from(x).map_err(|_| cuda_err(format!("GEMM dimension {x} exceeds i32")))
        };
        // SAFETY: the pointers come from live device buffers on this backend's stream (the
        // guards order the access), each holds at least the elements the product reads or
        // writes with these leading dimensions (checked above), and alpha/beta are f32 as
        // CUBLAS_COMPUTE_32F requires.
        unsafe {
            gemm_ex(
                *self.inner.blas.handle(),
                ta,
                tb,
                to_i32(cm)?,
                to_i32(cn)?,
                to_i32(ck)?,
                (&alpha) as *const f32 as *const _,
                pa as *const _,
                cudaDataType::CUDA_R_16BF,
                to_i32(lda)?,
                pb as *const _,
                cudaDataType::CUDA_R_16BF,
                to_i32(ldb)?,
                (&beta) as *const f32 as *const _,
                pc as *mut _,
                T::DTYPE,
                to_i32(ldc)?,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| cuda_err(format!("cuBLAS {p:?} gemm {m}x{n}x{k}: {e:?}")))
    }
}
