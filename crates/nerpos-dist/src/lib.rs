//! `nerpos-dist`: collective communication for data-parallel training.
//!
//! A [`Comm`] is one process's view of the job: its rank, the world size, and collectives — sum
//! all-reduce (f32, bf16, f64, u64 buffers and candle tensors, in place), broadcast, barrier and
//! all-gather of small values. Backends: a single process (world 1), the CPU ring over TCP
//! ([`ring::TcpComm`]), and NCCL through cudarc (feature `nccl`; with `cuda`, on candle CUDA tensors).
//! [`Rendezvous`] reads torchrun's or Slurm's environment; rank 0 runs a small store through which the
//! ranks find each other. A peer that dies or stalls makes every other rank's next collective fail
//! within a bounded time, with an error naming it.

pub mod element;
pub mod env;
pub mod grad;
pub mod reduce;
pub mod ring;
pub mod store;
pub mod tensor;
pub mod wire;

#[cfg(feature = "nccl")]
pub mod nccl;

pub use element::Element;
pub use env::{LaunchMode, Rendezvous};
pub use grad::Grad;
pub use reduce::{Buckets, DEFAULT_BUCKET_BYTES, all_reduce_bucketed};
pub use ring::TcpComm;
pub use wire::Timeouts;

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A launch variable is missing or malformed.
    #[error("{0}")]
    Env(String),
    #[error("rendezvous: {0}")]
    Rendezvous(String),
    /// A peer closed, stalled or misbehaved.
    #[error("rank {peer} ({addr}): {what}")]
    Peer {
        peer: usize,
        addr: String,
        what: String,
    },
    /// A peer went silent for longer than the collective timeout.
    #[error("rank {peer} ({addr}): {what}")]
    Stalled {
        peer: usize,
        addr: String,
        what: String,
    },
    /// Ranks that never entered a collective the others waited in.
    #[error("{0}")]
    Hung(String),
    /// Another rank failed and posted why.
    #[error("aborted because {0}")]
    Aborted(String),
    /// Ranks called different collectives.
    #[error("{0}")]
    Protocol(String),
    #[error("NCCL: {0}")]
    Nccl(String),
    #[error("tensor: {0}")]
    Tensor(String),
}

impl DistError {
    pub(crate) fn peer(peer: usize, addr: &str, what: String) -> DistError {
        DistError::Peer {
            peer,
            addr: addr.to_owned(),
            what,
        }
    }
}

/// One process's communicator.
pub enum Comm {
    /// World size 1: every collective is the identity.
    Single,
    Tcp(Box<TcpComm>),
    #[cfg(feature = "nccl")]
    Nccl(Box<nccl::NcclComm>),
}

impl Comm {
    /// Joins the job over the CPU ring (or stays alone in a world of 1).
    pub fn cpu(rdv: &Rendezvous, t: Timeouts) -> Result<Comm, DistError> {
        if rdv.world_size == 1 {
            return Ok(Comm::Single);
        }
        Ok(Comm::Tcp(Box::new(TcpComm::connect(rdv, t)?)))
    }

    pub fn rank(&self) -> usize {
        match self {
            Comm::Single => 0,
            Comm::Tcp(c) => c.rank(),
            #[cfg(feature = "nccl")]
            Comm::Nccl(c) => c.tcp().rank(),
        }
    }

    pub fn world_size(&self) -> usize {
        match self {
            Comm::Single => 1,
            Comm::Tcp(c) => c.world_size(),
            #[cfg(feature = "nccl")]
            Comm::Nccl(c) => c.tcp().world_size(),
        }
    }

    /// The TCP ring for host-side collectives (all backends but `Single` have one).
    fn host(&mut self) -> Option<&mut TcpComm> {
        match self {
            Comm::Single => None,
            Comm::Tcp(c) => Some(c),
            #[cfg(feature = "nccl")]
            Comm::Nccl(c) => Some(c.tcp_mut()),
        }
    }

    /// Sums a host buffer over all ranks, in place; all ranks end with the same bits.
    pub fn all_reduce_sum<T: Element>(&mut self, buf: &mut [T]) -> Result<(), DistError> {
        match self.host() {
            None => Ok(()),
            Some(c) => c.all_reduce_sum(buf),
        }
    }

    /// Copies `root`'s bytes to every rank.
    pub fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<(), DistError> {
        match self.host() {
            None => Ok(()),
            Some(c) => c.broadcast(buf, root),
        }
    }

    /// Every rank's value, in rank order.
    pub fn all_gather(&mut self, value: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        match self.host() {
            None => Ok(vec![value.to_vec()]),
            Some(c) => c.all_gather(value),
        }
    }

    pub fn barrier(&mut self) -> Result<(), DistError> {
        match self.host() {
            None => Ok(()),
            Some(c) => c.barrier(),
        }
    }
}
