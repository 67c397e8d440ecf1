//! Collectives on candle tensors, in place in the tensor's own storage (no copy through the host for
//! device tensors), and the gradient bucketing helper.

use std::cell::RefCell;
use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor};

use crate::{Comm, DistError};

#[derive(Clone, Copy)]
enum Collective {
    AllReduce,
    /// A sum the compute stream does not wait for (NCCL; the others finish it before returning).
    QueuedAllReduce,
    Broadcast(usize),
}

/// Runs a collective inside candle's in-place op machinery, which hands us the tensor's storage
/// mutably. candle's op interface takes `&self` and returns candle errors, so the communicator sits in a
/// `RefCell` and our own error is kept aside and returned instead.
struct CollectiveOp<'a> {
    comm: RefCell<&'a mut Comm>,
    what: Collective,
    error: RefCell<Option<DistError>>,
}

impl CollectiveOp<'_> {
    fn fail(&self, e: DistError) -> candle_core::Error {
        let msg = e.to_string();
        *self.error.borrow_mut() = Some(e);
        candle_core::Error::Msg(msg)
    }

    fn host<T: crate::Element>(&self, data: &mut [T]) -> Result<(), DistError> {
        let mut comm = self.comm.borrow_mut();
        match self.what {
            Collective::AllReduce | Collective::QueuedAllReduce => comm.all_reduce_sum(data),
            Collective::Broadcast(root) => comm.broadcast(bytemuck::cast_slice_mut(data), root),
        }
    }
}

fn contiguous(layout: &Layout) -> Result<Range<usize>, DistError> {
    layout
        .contiguous_offsets()
        .map(|(a, b)| a..b)
        .ok_or_else(|| DistError::Tensor("collectives need a contiguous tensor".into()))
}

impl InplaceOp1 for CollectiveOp<'_> {
    fn name(&self) -> &'static str {
        "nerpos-dist-collective"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let range = contiguous(layout).map_err(|e| self.fail(e))?;
        let result = match storage {
            CpuStorage::F32(v) => self.host(&mut v[range]),
            CpuStorage::BF16(v) => self.host(&mut v[range]),
            CpuStorage::F64(v) => self.host(&mut v[range]),
            CpuStorage::I64(v) => self.host(&mut v[range]),
            other => Err(DistError::Tensor(format!(
                "collectives support f32, bf16, f64 and i64 tensors, not {:?}",
                other.dtype()
            ))),
        };
        result.map_err(|e| self.fail(e))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &mut candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<()> {
        let range = contiguous(layout).map_err(|e| self.fail(e))?;
        let mut comm = self.comm.borrow_mut();
        let Comm::Nccl(nccl) = &mut **comm else {
            return Err(self.fail(DistError::Tensor(
                "a CUDA tensor needs the NCCL backend (the CPU ring sums host tensors)".into(),
            )));
        };
        let result = crate::nccl::on_cuda_storage(nccl, storage, range, self.device_op());
        result.map_err(|e| self.fail(e))
    }
}

impl CollectiveOp<'_> {
    #[cfg(feature = "cuda")]
    fn device_op(&self) -> crate::nccl::DeviceOp {
        use crate::nccl::DeviceOp;
        match self.what {
            Collective::AllReduce => DeviceOp::Sum,
            Collective::QueuedAllReduce => DeviceOp::QueuedSum,
            Collective::Broadcast(root) => DeviceOp::Broadcast(root),
        }
    }
}

impl Comm {
    fn tensor_collective(&mut self, t: &Tensor, what: Collective) -> Result<(), DistError> {
        if matches!(self, Comm::Single) {
            return Ok(());
        }
        let op = CollectiveOp {
            comm: RefCell::new(self),
            what,
            error: RefCell::new(None),
        };
        match t.inplace_op1(&op) {
            Ok(()) => Ok(()),
            Err(e) => Err(op
                .error
                .into_inner()
                .unwrap_or(DistError::Tensor(e.to_string()))),
        }
    }

    /// Sums a contiguous tensor over all ranks, in place (its storage is overwritten; views of it see
    /// the sum).
    pub fn all_reduce_tensor(&mut self, t: &Tensor) -> Result<(), DistError> {
        self.tensor_collective(t, Collective::AllReduce)
    }

    /// Starts summing a contiguous tensor over all ranks, in place. With NCCL the sum is queued on its
    /// stream and the compute stream does not wait for it: keep `t` alive and read it only after
    /// [`Comm::finish_queued`]. Elsewhere it is [`Comm::all_reduce_tensor`] (done on return).
    pub fn queue_all_reduce_tensor(&mut self, t: &Tensor) -> Result<(), DistError> {
        self.tensor_collective(t, Collective::QueuedAllReduce)
    }

    /// Makes the compute stream wait, once, for every sum queued by
    /// [`Comm::queue_all_reduce_tensor`] (NCCL; nothing blocks the host); a no-op elsewhere.
    pub fn finish_queued(&mut self) -> Result<(), DistError> {
        match self {
            #[cfg(feature = "nccl")]
            Comm::Nccl(nccl) => nccl.finish_queued(),
            _ => Ok(()),
        }
    }

    /// Overwrites a contiguous tensor with `root`'s, in place.
    pub fn broadcast_tensor(&mut self, t: &Tensor, root: usize) -> Result<(), DistError> {
        self.tensor_collective(t, Collective::Broadcast(root))
    }
}
