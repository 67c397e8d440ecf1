//! CUDA device settings that candle leaves at defaults unsuited to training, and memory accounting.
//! Without the `cuda` feature (or on the CPU) every function here does nothing.

use candle_core::Device;

use crate::error::Result;

/// Settings for one training process on one GPU:
/// - candle records a CUDA event on every tensor use, for safety across streams; a process here uses
///   one stream, so the tracking only costs time (one event per kernel launch);
/// - tensors come from the device's default stream-ordered memory pool, which by default returns
///   every freed byte to the driver at each synchronisation, so the next step allocates from scratch;
///   keeping the pool's memory (release threshold = ∞) is what PyTorch's caching allocator does.
///
/// Call before creating any tensor on `device`.
pub fn tune_for_training(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        use candle_core::cuda_backend::cudarc::driver::sys;
        // SAFETY: every tensor of this process lives on this device's one stream.
        unsafe { cuda.disable_event_tracking() };
        let pool = default_pool(cuda)?;
        let mut threshold = u64::MAX;
        // SAFETY: a valid pool and a u64 attribute value, as the driver API documents.
        let r = unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&raw mut threshold).cast(),
            )
        };
        check(r, "setting the memory pool's release threshold")?;
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
    Ok(())
}

/// Whether f32 matrix products on `device` use TF32 (cuBLAS's reduced-precision f32 mode). candle's
/// switch is process-wide: set once, where the run's policy of what runs is decided.
pub fn set_tf32(device: &Device, on: bool) {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        candle_core::cuda_backend::set_gemm_reduced_precision_f32(on);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (device, on);
}

/// Peak bytes in use in the device's memory pool since the last [`reset_peak_memory`]; `None` on the
/// CPU.
pub fn peak_memory(device: &Device) -> Result<Option<u64>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        use candle_core::cuda_backend::cudarc::driver::sys;
        let pool = default_pool(cuda)?;
        let mut value = 0u64;
        // SAFETY: a valid pool and a u64 out-parameter.
        let r = unsafe {
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&raw mut value).cast(),
            )
        };
        check(r, "reading the memory pool's high-water mark")?;
        return Ok(Some(value));
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
    Ok(None)
}

/// Restarts [`peak_memory`]'s high-water mark.
pub fn reset_peak_memory(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        use candle_core::cuda_backend::cudarc::driver::sys;
        let pool = default_pool(cuda)?;
        let mut zero = 0u64;
        // SAFETY: as above; the driver accepts only 0 for this attribute.
        let r = unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&raw mut zero).cast(),
            )
        };
        check(r, "resetting the memory pool's high-water mark")?;
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
    Ok(())
}

#[cfg(feature = "cuda")]
fn default_pool(
    cuda: &candle_core::CudaDevice,
) -> Result<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let stream = cuda.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread()
        .map_err(|e| crate::error::ModelError::Cuda(format!("binding the CUDA context: {e}")))?;
    let mut pool = std::ptr::null_mut();
    // SAFETY: the context is current and cu_device() is its device.
    let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    check(r, "getting the device's memory pool")?;
    Ok(pool)
}

#[cfg(feature = "cuda")]
fn check(r: candle_core::cuda_backend::cudarc::driver::sys::CUresult, what: &str) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUresult;
    if r == CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(crate::error::ModelError::Cuda(format!("{what}: {r:?}")))
    }
}
