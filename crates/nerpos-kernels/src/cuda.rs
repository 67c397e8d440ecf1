//! The GPU side of [`crate::launch`]: launches queued on the CUDA stream of an op's tensors, the kernels
//! loaded once per context from the fatbin build.rs compiles (nothing is compiled when a job starts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
    SyncOnDrop,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Device, Layout, Storage, Tensor};

use crate::error::{KernelError, Result};
use crate::launch::{Arg, Exec, Launch, Ptr};

/// Cubins for sm_80 and sm_90 and PTX for later GPUs.
static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels.fatbin"));

/// The kernel `name` on `dev`'s context (the module is loaded once per context: a cache, not a switch).
fn function(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    type Loaded = (
        HashMap<usize, Arc<CudaModule>>,
        HashMap<(usize, String), CudaFunction>,
    );
    static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let key = Arc::as_ptr(ctx) as usize;
    let mut guard = LOADED
        .lock()
        .map_err(|_| KernelError::Internal("the CUDA kernel cache is poisoned".into()))?;
    let (modules, functions) = guard.get_or_insert_with(Default::default);
    if let Some(f) = functions.get(&(key, name.to_owned())) {
        return Ok(f.clone());
    }
    let module = match modules.get(&key) {
        Some(m) => m.clone(),
        None => {
            let m = ctx.load_module(Ptx::from_binary(FATBIN.to_vec())).w()?;
            modules.insert(key, m.clone());
            m
        }
    };
    let f = module.load_function(name).w()?;
    functions.insert((key, name.to_owned()), f.clone());
    Ok(f)
}

/// Launches on one device's stream; scratch buffers live as long as the executor.
struct CudaExec<'a> {
    dev: &'a CudaDevice,
    stream: &'a Arc<CudaStream>,
    scratch: Vec<CudaSlice<u8>>,
    /// Events recorded when the launches that read or write the tensors are queued.
    guards: Vec<SyncOnDrop<'a>>,
}

impl Exec for CudaExec<'_> {
    fn scratch(&mut self, bytes: usize) -> Result<Ptr> {
        // SAFETY: scratch is written by the launches before it is read.
        let s = unsafe { self.dev.alloc::<u8>(bytes.max(1)) }?;
        let (ptr, _) = s.device_ptr(self.stream);
        self.scratch.push(s);
        Ok(Ptr(ptr))
    }

    fn upload(&mut self, data: &[u8]) -> Result<Ptr> {
        let s = self.stream.clone_htod(data).w()?;
        let (ptr, _) = s.device_ptr(self.stream);
        self.scratch.push(s);
        Ok(Ptr(ptr))
    }

    fn launch(&mut self, l: Launch) -> Result<()> {
        l.check()?;
        let f = function(self.dev, &l.kernel)?;
        let mut b = self.stream.launch_builder(&f);
        for a in &l.args {
            match a {
                Arg::Ptr(p) => b.arg(&p.0),
                Arg::I32(v) => b.arg(v),
                Arg::U32(v) => b.arg(v),
                Arg::U64(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
                Arg::Att(s) => b.arg(s),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (l.grid[0], l.grid[1], l.grid[2]),
            block_dim: (l.block[0], l.block[1], l.block[2]),
            shared_mem_bytes: l.shared,
        };
        // SAFETY: the op that built the launch passes the buffers its kernel indexes, of the sizes it
        // indexes (each op's emulator test runs this very launch against the CPU kernel).
        unsafe { b.launch(cfg) }.w()?;
        crate::stats::count_launch();
        Ok(())
    }
}

// SAFETY: a plain #[repr(C)] struct of numbers, laid out as the kernels' struct (checked at compile
// time against the constants both sides share).
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for crate::launch::AttShape {}

/// The address of the elements `l` addresses in `s` (contiguous), and the event guard of the read.
fn address<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    stream: &'a Arc<CudaStream>,
) -> Result<(Ptr, SyncOnDrop<'a>)> {
    let Some((a, _)) = l.contiguous_offsets() else {
        return Err(KernelError::Internal(
            "a CUDA kernel got a strided tensor".into(),
        ));
    };
    macro_rules! at {
        ($t:ty) => {{
            let (ptr, g) = s.as_cuda_slice::<$t>()?.device_ptr(stream);
            Ok((Ptr(ptr).offset(a * std::mem::size_of::<$t>()), g))
        }};
    }
    match s.dtype() {
        DType::F32 => at!(f32),
        DType::BF16 => at!(half::bf16),
        DType::U32 => at!(u32),
        DType::I32 => at!(i32),
        DType::I64 => at!(i64),
        DType::U8 => at!(u8),
        other => Err(KernelError::Internal(format!(
            "a CUDA kernel got a {other:?} tensor"
        ))),
    }
}

/// A new (uninitialised) buffer of `n` elements of `dtype`, as candle storage, with its address.
fn output(
    dev: &CudaDevice,
    stream: &Arc<CudaStream>,
    dtype: DType,
    n: usize,
) -> Result<(CudaStorage, Ptr)> {
    macro_rules! alloc {
        ($t:ty) => {{
            // SAFETY: the op's kernels write the whole output before anything reads it.
            let s = unsafe { dev.alloc::<$t>(n.max(1)) }?;
            let (ptr, _) = s.device_ptr(stream);
            let ptr = Ptr(ptr);
            Ok((CudaStorage::wrap_cuda_slice(s, dev.clone()), ptr))
        }};
    }
    match dtype {
        DType::F32 => alloc!(f32),
        DType::BF16 => alloc!(half::bf16),
        DType::U32 => alloc!(u32),
        other => Err(KernelError::Internal(format!(
            "a CUDA kernel output of {other:?}"
        ))),
    }
}

/// See [`crate::on_gpu`].
pub(crate) fn run(
    inputs: &[Option<&Tensor>],
    outputs: &[(DType, usize)],
    launches: impl FnOnce(&mut dyn Exec, &[Ptr], &[Ptr]) -> Result<()>,
) -> Result<Vec<Tensor>> {
    let Some(Device::Cuda(dev)) = inputs.iter().flatten().next().map(|t| t.device().clone()) else {
        return Err(KernelError::Internal(
            "a CUDA kernel got no GPU tensor".into(),
        ));
    };
    let stream = dev.cuda_stream();
    let contiguous: Vec<Option<Tensor>> = inputs
        .iter()
        .map(|t| t.map(Tensor::contiguous).transpose())
        .collect::<candle_core::Result<_>>()?;
    let storages: Vec<_> = contiguous
        .iter()
        .map(|t| t.as_ref().map(Tensor::storage_and_layout))
        .collect();
    let mut exec = CudaExec {
        dev: &dev,
        stream: &stream,
        scratch: Vec::new(),
        guards: Vec::new(),
    };
    let mut ins = Vec::with_capacity(storages.len());
    for s in &storages {
        ins.push(match s {
            None => Ptr::NULL,
            Some((storage, layout)) => {
                let Storage::Cuda(c) = &**storage else {
                    return Err(KernelError::Internal(
                        "a CUDA kernel got a tensor of another device".into(),
                    ));
                };
                let (p, g) = address(c, layout, &stream)?;
                exec.guards.push(g);
                p
            }
        });
    }
    let mut outs = Vec::with_capacity(outputs.len());
    let mut out_ptrs = Vec::with_capacity(outputs.len());
    for &(dtype, n) in outputs {
        let (s, p) = output(&dev, &stream, dtype, n)?;
        outs.push((s, n));
        out_ptrs.push(p);
    }
    launches(&mut exec, &ins, &out_ptrs)?;
    drop(exec);
    Ok(outs
        .into_iter()
        .map(|(s, n)| Tensor::from_storage(Storage::Cuda(s), n, BackpropOp::none(), false))
        .collect())
}
