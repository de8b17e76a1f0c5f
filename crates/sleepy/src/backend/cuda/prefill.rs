//! Prompt processing: cuBLAS GEMMs on 16-bit copies of the activations (f32 accumulate,
//! f32 output), with GEMV as the fallback where cuBLAS cannot be loaded.

use super::driver::{self, DevBuf};
use super::{CudaAct, CudaBackend, CudaWeight};
use crate::error::{Error, Result};
use cudarc::cublas::sys as blas;
use cudarc::driver::sys;
use std::ffi::c_void;

pub(crate) struct Blas(blas::cublasHandle_t);
// SAFETY: the handle is only used under the backend's stream discipline, one call at a time.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

fn blas_check(r: blas::cublasStatus_t, what: &str) -> Result<()> {
    if r == blas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cuda(format!("cuBLAS {what}: {r:?}")))
    }
}

impl Blas {
    pub(crate) fn new(stream: sys::CUstream) -> Result<Blas> {
        let r = std::panic::catch_unwind(|| -> Result<Blas> {
            let mut h = std::ptr::null_mut();
            // SAFETY: creates a handle and binds it to our stream.
            unsafe {
                blas_check(blas::cublasCreate_v2(&mut h), "create")?;
                blas_check(blas::cublasSetStream_v2(h, stream as _), "set stream")?;
            }
            Ok(Blas(h))
        });
        r.unwrap_or_else(|_| Err(Error::Cuda("cuBLAS could not be used".into())))
    }
}

impl CudaBackend {
    /// A 16-bit copy (the weight's format) of `x`, in the backend's scratch.
    fn half_copy(&self, x: &CudaAct, dt: u32) -> Result<u64> {
        let n = x.rows * x.cols;
        let ptr = self.half_scratch(n * 2)?;
        let blocks = n.div_ceil(256).clamp(1, 4096) as u32;
        self.launch("to_half", [blocks, 1, 1], [256, 1, 1], 0, driver::kargs![x.ptr(), ptr, dt, n as i64])?;
        Ok(ptr)
    }

    /// The scratch for 16-bit GEMM inputs, grown to `bytes`.
    pub(super) fn half_scratch(&self, bytes: usize) -> Result<u64> {
        let mut st = self.state()?;
        if st.half.bytes < bytes {
            // The old buffer may still be read by queued work.
            driver::sync(self.stream.0)?;
            st.half = DevBuf::alloc(bytes.next_power_of_two())?;
        }
        Ok(st.half.ptr)
    }

    /// y[t, n] (= or +=) sum_k xh[t, k] * W[n, k]; xh is 16-bit in W's format, y f32.
    fn gemm(&self, xh: u64, rows: usize, w: &CudaWeight, y: u64, accumulate: bool) -> Result<()> {
        if let Some(q) = &w.quant {
            return self.gemm_quant(xh, rows, w, q, y, accumulate);
        }
        self.gemm_ex(w.buf.ptr, w.dt, w.n, w.k, xh, rows, y, w.n, accumulate)
    }

    /// The GEMM on raw pointers: y[t, 0..m] (row stride ldc) = or += xh[t, :] @ A^T, with A
    /// `[m, k]` row-major and xh `[rows, k]`, both 16-bit (dt), y f32.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm_ex(&self, a: u64, dt: u32, m: usize, k: usize, xh: u64, rows: usize, y: u64, ldc: usize, accumulate: bool) -> Result<()> {
        let Some(h) = &self.blas else { return Err(Error::Cuda("cuBLAS is not available".into())) };
        self.flush()?;
        let dtype = if dt == 0 { blas::cudaDataType::CUDA_R_16BF } else { blas::cudaDataType::CUDA_R_16F };
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        let (m, n, k, ldc) = (m as i32, rows as i32, k as i32, ldc as i32);
        // Column-major view: Y^T [n_out, t] = W [k, n_out]^T * X^T [k, t].
        // SAFETY: pointers are live device buffers of the sizes the dims describe.
        blas_check(
            unsafe {
                blas::cublasGemmEx(
                    h.0,
                    blas::cublasOperation_t::CUBLAS_OP_T,
                    blas::cublasOperation_t::CUBLAS_OP_N,
                    m,
                    n,
                    k,
                    &alpha as *const f32 as *const c_void,
                    a as *const c_void,
                    dtype,
                    k,
                    xh as *const c_void,
                    dtype,
                    k,
                    &beta as *const f32 as *const c_void,
                    y as *mut c_void,
                    blas::cudaDataType::CUDA_R_32F,
                    ldc,
                    blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                )
            },
            "GEMM",
        )
    }

    /// Whether a product of `rows` tokens goes through cuBLAS (else through GEMV).
    pub(super) fn use_gemm(&self, rows: usize) -> bool {
        rows > 2 && self.blas.is_some()
    }

    /// out = x @ W^T (+ bias) for many rows.
    pub(super) fn gemm_f32(&self, x: &CudaAct, w: &CudaWeight, bias: Option<&CudaAct>, out: &mut CudaAct) -> Result<()> {
        let xh = self.half_copy(x, w.dt)?;
        self.gemm(xh, x.rows, w, out.ptr(), false)?;
        if let Some(b) = bias {
            self.add_rows(out, b.ptr(), w.n)?;
        }
        Ok(())
    }

    /// x += a @ W^T for many rows (beta = 1 into the residual).
    pub(super) fn gemm_add(&self, a: &CudaAct, w: &CudaWeight, x: &mut CudaAct) -> Result<()> {
        let ah = self.half_copy(a, w.dt)?;
        self.gemm(ah, a.rows, w, x.ptr(), true)
    }

    /// out = rmsnorm(x) * norm @ W^T (+ bias) for many rows: the norm writes the 16-bit copy.
    pub(super) fn gemm_normed(&self, x: &CudaAct, norm: &CudaAct, eps: f32, w: &CudaWeight, bias: Option<&CudaAct>, out: &mut CudaAct) -> Result<()> {
        let xh = self.half_scratch(x.rows * x.cols * 2)?;
        self.launch("rmsnorm", [x.rows as u32, 1, 1], [256, 1, 1], 0, driver::kargs![x.ptr(), 0u64, norm.ptr(), eps, 0u64, xh, w.dt, x.cols as i32])?;
        self.gemm(xh, x.rows, w, out.ptr(), false)?;
        if let Some(b) = bias {
            self.add_rows(out, b.ptr(), w.n)?;
        }
        Ok(())
    }

    /// x[t, :] += row (a bias) for every row of x.
    pub(super) fn add_rows(&self, x: &CudaAct, row: u64, ncols: usize) -> Result<()> {
        let n = x.rows * x.cols;
        let blocks = n.div_ceil(256).clamp(1, 4096) as u32;
        self.launch("add", [blocks, 1, 1], [256, 1, 1], 0, driver::kargs![x.ptr(), row, n as i64, ncols as i32])
    }
}
