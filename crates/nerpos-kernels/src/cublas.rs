//! A matrix product candle's matmul cannot express: `c += a·b` by cuBLAS into c's own memory (β = 1),
//! so the sum of a layer's two input gradients costs no pass of its own (on a BERT-base step the
//! separate sums were among candle's `badd` launches, 8.3 ms in all).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::{result::gemm_ex, sys};
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::{
    CudaDevice, gemm_reduced_precision_bf16, gemm_reduced_precision_f32,
};
use candle_core::{CpuStorage, CudaStorage, DType, InplaceOp3, Layout, Tensor};

use crate::error::Result;

/// `c (m×n) += a (m×k) · b (k×n)` on their GPU when all three are contiguous and of one dtype (f32 or
/// bf16); `false` (nothing done) otherwise, where the caller composes the sum. candle refuses the op
/// (an error, never a wrong sum) if c shares memory with a or b.
pub(crate) fn add_product(a: &Tensor, b: &Tensor, c: &Tensor) -> Result<bool> {
    let ((m, k), (k2, n)) = (a.dims2()?, b.dims2()?);
    let dtype = c.dtype();
    let fits = k == k2
        && c.dims2()? == (m, n)
        && matches!(dtype, DType::F32 | DType::BF16)
        && a.dtype() == dtype
        && b.dtype() == dtype
        && [a, b, c]
            .iter()
            .all(|t| t.is_contiguous() && t.device().is_cuda());
    let dims = [m, n, k].map(|d| i32::try_from(d).ok().filter(|&d| d > 0));
    let (true, [Some(m), Some(n), Some(k)]) = (fits, dims) else {
        return Ok(false);
    };
    c.inplace_op3(a, b, &AddProduct { m, n, k })?;
    // One of the fused ops' launches: what `gpu_kernels = false` never makes.
    crate::stats::count_launch();
    Ok(true)
}

/// The product's shape as cuBLAS takes it.
struct AddProduct {
    m: i32,
    n: i32,
    k: i32,
}

impl InplaceOp3 for AddProduct {
    fn name(&self) -> &'static str {
        "nerpos-add-product"
    }

    fn cpu_fwd(
        &self,
        _: &mut CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<()> {
        // `add_product` runs it on GPU tensors only; the CPU sums in the product's epilogue.
        candle_core::bail!("nerpos-add-product runs on a GPU only")
    }

    fn cuda_fwd(
        &self,
        dst: &mut CudaStorage,
        dst_l: &Layout,
        a: &CudaStorage,
        a_l: &Layout,
        b: &CudaStorage,
        b_l: &Layout,
    ) -> candle_core::Result<()> {
        let dev = dst.device().clone();
        match dst.dtype() {
            DType::F32 => self.gemm::<f32>(&dev, (dst, dst_l), (a, a_l), (b, b_l)),
            DType::BF16 => self.gemm::<half::bf16>(&dev, (dst, dst_l), (a, a_l), (b, b_l)),
            other => candle_core::bail!("nerpos-add-product: a {other:?} tensor"),
        }
    }
}

/// What cuBLAS is told of an element type: its data type, and the compute type candle's own matmul
/// picks for it (so that the product rounds as candle's would: TF32 or reduced-precision bf16 sums
/// where candle's switches allow them).
trait Element:
    candle_core::cuda_backend::CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr
{
    const DATA: sys::cudaDataType;
    fn compute() -> sys::cublasComputeType_t;
}

impl Element for f32 {
    const DATA: sys::cudaDataType = sys::cudaDataType::CUDA_R_32F;
    fn compute() -> sys::cublasComputeType_t {
        if gemm_reduced_precision_f32() {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        }
    }
}

impl Element for half::bf16 {
    const DATA: sys::cudaDataType = sys::cudaDataType::CUDA_R_16BF;
    fn compute() -> sys::cublasComputeType_t {
        if gemm_reduced_precision_bf16() {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        }
    }
}

impl AddProduct {
    /// One cuBLAS call on candle's handle (bound to the device's stream). Row-major `c = a·b` is
    /// column-major `cᵀ = bᵀ·aᵀ`: b's memory as an n × k matrix, a's as k × m, c's as n × m.
    fn gemm<T: Element>(
        &self,
        dev: &CudaDevice,
        (c, c_l): (&mut CudaStorage, &Layout),
        (a, a_l): (&CudaStorage, &Layout),
        (b, b_l): (&CudaStorage, &Layout),
    ) -> candle_core::Result<()> {
        let stream = dev.cuda_stream();
        let at = |l: &Layout| l.start_offset() * std::mem::size_of::<T>();
        let (pa, _ga) = a.as_cuda_slice::<T>()?.device_ptr(&stream);
        let (pb, _gb) = b.as_cuda_slice::<T>()?.device_ptr(&stream);
        let (pa, pb) = (pa + at(a_l) as u64, pb + at(b_l) as u64);
        let c_at = at(c_l) as u64;
        let (pc, _gc) = c.as_cuda_slice_mut::<T>()?.device_ptr_mut(&stream);
        let (one, blas) = (1f32, dev.cublas_handle());
        let op = sys::cublasOperation_t::CUBLAS_OP_N;
        // SAFETY: the three pointers address contiguous buffers of m·k, k·n and m·n elements of T
        // (checked by `add_product`, offsets added), on the stream candle's handle is bound to; alpha
        // and beta are f32, as both compute types require; c does not overlap a or b (candle's
        // in-place op refuses aliased operands).
        unsafe {
            gemm_ex(
                *blas.handle(),
                op,
                op,
                self.n,
                self.m,
                self.k,
                (&raw const one).cast(),
                pb as *const _,
                T::DATA,
                self.n,
                pa as *const _,
                T::DATA,
                self.k,
                (&raw const one).cast(),
                (pc + c_at) as *mut _,
                T::DATA,
                self.n,
                T::compute(),
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )
        }
        .map_err(|e| candle_core::Error::Cuda(format!("cuBLAS c += a·b: {e:?}").into()))
    }
}
