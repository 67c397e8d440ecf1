//! The NCCL backend (feature `nccl`): one NCCL communicator per process/GPU, on a stream of its own,
//! ordered after the compute stream's work before each collective and, for most collectives, before
//! the compute stream's later work after it. The gradient sums are the exception: they are *queued*
//! (the compute stream goes on with backward while they run, as DDP's buckets do) and the compute
//! stream waits for all of them once, before the optimiser reads them ([`NcclComm::finish_queued`]).
//! Small host values (counts, hashes, barriers) go over the TCP ring that also carried the NCCL
//! unique id.

use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtrMut};
use cudarc::nccl::safe::{Comm as RawComm, Id, NcclType, ReduceOp};

use crate::{Comm, DistError, Rendezvous, TcpComm, Timeouts};

const ID_KEY: &str = "nccl_id";

fn nccl_err(what: &str) -> impl Fn(cudarc::nccl::result::NcclError) -> DistError + '_ {
    move |e| DistError::Nccl(format!("{what}: {e:?}"))
}

fn cuda_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> DistError + '_ {
    move |e| DistError::Nccl(format!("{what}: {e:?}"))
}

/// NCCL plus the TCP ring.
pub struct NcclComm {
    tcp: TcpComm,
    comm: RawComm,
    /// The stream the tensors are computed on (candle's).
    compute: Arc<CudaStream>,
}

impl NcclComm {
    /// Creates the communicator: rank 0 makes the unique id and publishes it through the store.
    pub fn new(tcp: TcpComm, compute: Arc<CudaStream>) -> Result<NcclComm, DistError> {
        let id = if tcp.rank() == 0 {
            let id = Id::new().map_err(nccl_err("creating the unique id"))?;
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            tcp.store_set(ID_KEY, &bytes)?;
            id
        } else {
            let bytes = tcp.store_get(ID_KEY)?;
            let mut internal = [0 as std::ffi::c_char; 128];
            if bytes.len() != internal.len() {
                return Err(DistError::Nccl(format!(
                    "the unique id in the store has {} bytes, not 128",
                    bytes.len()
                )));
            }
            internal
                .iter_mut()
                .zip(&bytes)
                .for_each(|(d, &b)| *d = b as std::ffi::c_char);
            Id::uninit(internal)
        };
        let stream = compute
            .fork()
            .map_err(cuda_err("creating the NCCL stream"))?;
        let comm = RawComm::from_rank(stream, tcp.rank(), tcp.world_size(), id)
            .map_err(nccl_err("ncclCommInitRank"))?;
        Ok(NcclComm { tcp, comm, compute })
    }

    pub fn tcp(&self) -> &TcpComm {
        &self.tcp
    }

    pub fn tcp_mut(&mut self) -> &mut TcpComm {
        &mut self.tcp
    }

    /// Runs `f` on the NCCL stream after the compute stream's queued work, and makes the compute
    /// stream's later work wait for it. Nothing blocks the host.
    fn ordered<R>(&self, f: impl FnOnce(&RawComm) -> Result<R, DistError>) -> Result<R, DistError> {
        let nccl = self.comm.stream();
        nccl.join(&self.compute)
            .map_err(cuda_err("ordering NCCL after compute"))?;
        let r = f(&self.comm)?;
        self.compute
            .join(&nccl)
            .map_err(cuda_err("ordering compute after NCCL"))?;
        Ok(r)
    }

    /// Sums a device buffer over all ranks, in place.
    pub fn all_reduce_in_place<T: NcclType, B: DevicePtrMut<T>>(
        &self,
        buf: &mut B,
    ) -> Result<(), DistError> {
        self.ordered(|c| {
            c.all_reduce_in_place(buf, &ReduceOp::Sum)
                .map(|_| ())
                .map_err(nccl_err("ncclAllReduce"))
        })
    }

    /// Queues the sum of a device buffer over all ranks, in place, on the NCCL stream after the
    /// compute stream's queued work (the gradients it sums), without making the compute stream wait
    /// for it: backward goes on while it runs. The buffer must stay alive, and be read on the compute
    /// stream only after [`NcclComm::finish_queued`].
    pub fn queue_all_reduce<T: NcclType, B: DevicePtrMut<T>>(
        &self,
        buf: &mut B,
    ) -> Result<(), DistError> {
        self.comm
            .stream()
            .join(&self.compute)
            .map_err(cuda_err("ordering NCCL after compute"))?;
        self.comm
            .all_reduce_in_place(buf, &ReduceOp::Sum)
            .map(|_| ())
            .map_err(nccl_err("ncclAllReduce"))
    }

    /// Makes the compute stream's later work wait for every collective queued so far (one event;
    /// nothing blocks the host).
    pub fn finish_queued(&self) -> Result<(), DistError> {
        self.compute
            .join(&self.comm.stream())
            .map_err(cuda_err("ordering compute after NCCL"))
    }

    /// Overwrites a device buffer with `root`'s, in place.
    pub fn broadcast_in_place<T: NcclType, B: DevicePtrMut<T>>(
        &self,
        buf: &mut B,
        root: usize,
    ) -> Result<(), DistError> {
        self.ordered(|c| {
            c.broadcast_in_place(buf, root as i32)
                .map(|_| ())
                .map_err(nccl_err("ncclBroadcast"))
        })
    }

    /// Waits until the NCCL stream has finished what was queued (for timing).
    pub fn synchronize(&self) -> Result<(), DistError> {
        self.comm
            .stream()
            .synchronize()
            .map_err(cuda_err("synchronizing the NCCL stream"))
    }
}

impl Comm {
    /// Joins the job over NCCL for device tensors (with the TCP ring for host values); `compute` is
    /// the CUDA stream the tensors are produced on.
    pub fn nccl(
        rdv: &Rendezvous,
        t: Timeouts,
        compute: Arc<CudaStream>,
    ) -> Result<Comm, DistError> {
        Ok(Comm::Nccl(Box::new(NcclComm::new(
            TcpComm::connect(rdv, t)?,
            compute,
        )?)))
    }
}

/// An in-place collective on a device buffer (candle's CUDA tensors: the `cuda` feature).
#[cfg(feature = "cuda")]
#[derive(Clone, Copy)]
pub(crate) enum DeviceOp {
    /// A sum the compute stream waits for.
    Sum,
    /// A sum queued without the compute stream waiting ([`NcclComm::queue_all_reduce`]).
    QueuedSum,
    /// Root's buffer everywhere.
    Broadcast(usize),
}

/// The in-place collective `op` on a candle CUDA tensor's storage (elements `range`).
#[cfg(feature = "cuda")]
pub(crate) fn on_cuda_storage(
    nccl: &NcclComm,
    storage: &mut candle_core::CudaStorage,
    range: std::ops::Range<usize>,
    op: DeviceOp,
) -> Result<(), DistError> {
    use candle_core::DType;
    use candle_core::backend::BackendStorage;
    use half::bf16;
    let tensor = |e: candle_core::Error| DistError::Tensor(e.to_string());
    fn run<T: NcclType, B: DevicePtrMut<T>>(
        n: &NcclComm,
        buf: &mut B,
        op: DeviceOp,
    ) -> Result<(), DistError> {
        match op {
            DeviceOp::Sum => n.all_reduce_in_place(buf),
            DeviceOp::QueuedSum => n.queue_all_reduce(buf),
            DeviceOp::Broadcast(r) => n.broadcast_in_place(buf, r),
        }
    }
    match storage.dtype() {
        DType::F32 => run(
            nccl,
            &mut storage
                .as_cuda_slice_mut::<f32>()
                .map_err(tensor)?
                .slice_mut(range),
            op,
        ),
        DType::BF16 => run(
            nccl,
            &mut storage
                .as_cuda_slice_mut::<bf16>()
                .map_err(tensor)?
                .slice_mut(range),
            op,
        ),
        DType::F64 => run(
            nccl,
            &mut storage
                .as_cuda_slice_mut::<f64>()
                .map_err(tensor)?
                .slice_mut(range),
            op,
        ),
        DType::I64 => run(
            nccl,
            &mut storage
                .as_cuda_slice_mut::<i64>()
                .map_err(tensor)?
                .slice_mut(range),
            op,
        ),
        other => Err(DistError::Tensor(format!(
            "NCCL collectives support f32, bf16, f64 and i64, not {other:?}"
        ))),
    }
}
