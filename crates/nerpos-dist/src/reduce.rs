//! One optimiser step's gradients summed over the ranks — the trainer's one interface to it, whatever
//! the backend: alone nothing moves; over the CPU ring a communication thread sums complete buckets
//! while backward is still running (what PyTorch DDP does); with NCCL each complete bucket's sum is
//! queued on the NCCL stream as backward hands it over, and the compute stream waits for them once,
//! after backward ([`reduce_gradients_inline`]).
//!
//! The model's backward hands out gradients one at a time, from the head down. They are grouped in
//! buckets of about `bucket_bytes` in that order (the same buckets on every rank: the parameters and
//! their sizes are the same), by the one planner here ([`Buckets::plan`]), which the trainer and the
//! benchmarks use alike. The communication thread takes buckets strictly in order, so results do not
//! depend on timing. A row gradient (the word embeddings') is its own bucket: the union of the ranks'
//! rows, then their values.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use candle_core::{DType, Shape, Tensor};

use crate::grad::{Grad, scatter_rows, union};
use crate::{Comm, DistError};

type Result<T> = std::result::Result<T, DistError>;

/// Bucket size when none is configured: the trainer's default (4 MB: several buckets of MiniLM's
/// 44 MB of dense gradients are reduced while backward runs; measured in docs/benchmarks.md).
pub const DEFAULT_BUCKET_BYTES: usize = 4_000_000;

/// The bucket plan: parameter names in backward order, cut into buckets. A bucket is closed once it
/// holds `bucket_bytes` or more (a gradient larger than a bucket fills one alone).
#[derive(Debug, Clone)]
pub struct Buckets {
    /// Each bucket's parameter names, in backward order.
    pub members: Vec<Vec<String>>,
    /// name → (bucket, position in it).
    index: BTreeMap<String, (usize, usize)>,
}

impl Buckets {
    /// Cuts `order` (name, bytes, whether a row gradient) into buckets of about `bucket_bytes`; a row
    /// gradient always has a bucket of its own.
    pub fn plan(order: &[(String, usize, bool)], bucket_bytes: usize) -> Buckets {
        let mut members: Vec<Vec<String>> = Vec::new();
        let mut current: Vec<String> = Vec::new();
        let mut bytes = 0;
        for (name, size, rows) in order {
            if *rows {
                if !current.is_empty() {
                    members.push(std::mem::take(&mut current));
                    bytes = 0;
                }
                members.push(vec![name.clone()]);
                continue;
            }
            current.push(name.clone());
            bytes += size;
            if bytes >= bucket_bytes {
                members.push(std::mem::take(&mut current));
                bytes = 0;
            }
        }
        if !current.is_empty() {
            members.push(current);
        }
        let index = members
            .iter()
            .enumerate()
            .flat_map(|(b, m)| m.iter().enumerate().map(move |(i, n)| (n.clone(), (b, i))))
            .collect();
        Buckets { members, index }
    }
}

/// A complete bucket, on its way to the communication thread.
struct Job {
    bucket: usize,
    grads: Vec<Grad>,
}

/// The step's gradients summed over the ranks, and what it took.
pub struct Reduced {
    pub grads: BTreeMap<String, Grad>,
    /// Time spent in collectives, overlapped with backward or not.
    pub busy: Duration,
    /// Time waited for the reduction after backward (the exposed all-reduce).
    pub exposed: Duration,
    /// When each bucket was handed over, relative to the step's start (for tests and profiles).
    pub submitted: Vec<Duration>,
}

/// Where a complete bucket goes.
enum Out<'a> {
    /// The CPU ring's communication thread.
    Thread(Sender<Job>),
    /// Started here, in bucket order (NCCL: queued on its stream).
    Inline(Inline<'a>),
}

/// Buckets started as they complete, strictly in bucket order (every rank must issue the same
/// collectives in the same order; a bucket that completes early waits for its turn).
struct Inline<'a> {
    comm: &'a mut Comm,
    dtype: DType,
    next: usize,
    early: BTreeMap<usize, Vec<Grad>>,
    pending: Vec<Pending>,
    busy: Duration,
}

impl Inline<'_> {
    fn complete(&mut self, bucket: usize, grads: Vec<Grad>) -> Result<()> {
        self.early.insert(bucket, grads);
        while let Some(grads) = self.early.remove(&self.next) {
            let t0 = Instant::now();
            self.pending
                .push(start_bucket(self.comm, grads, self.dtype)?);
            self.busy += t0.elapsed();
            self.next += 1;
        }
        Ok(())
    }
}

/// Collects one step's gradients into buckets and hands complete buckets on.
struct Reducer<'a> {
    plan: &'a Buckets,
    slots: Vec<Vec<Option<Grad>>>,
    /// Which gradients have been handed over.
    given: Vec<Vec<bool>>,
    missing: Vec<usize>,
    out: Out<'a>,
    started: Instant,
    submitted: Vec<Duration>,
}

impl<'a> Reducer<'a> {
    /// A reducer handing complete buckets to `out`.
    fn new(plan: &'a Buckets, out: Out<'a>) -> Reducer<'a> {
        Reducer {
            slots: plan.members.iter().map(|m| vec![None; m.len()]).collect(),
            given: plan.members.iter().map(|m| vec![false; m.len()]).collect(),
            missing: plan.members.iter().map(Vec::len).collect(),
            plan,
            out,
            started: Instant::now(),
            submitted: vec![Duration::ZERO; plan.members.len()],
        }
    }

    /// Hands over `name`'s gradient (this rank's sum over its micro-batches); sends its bucket once
    /// complete.
    fn push(&mut self, name: &str, g: Grad) -> Result<()> {
        let &(b, i) =
            self.plan.index.get(name).ok_or_else(|| {
                DistError::Tensor(format!("no bucket holds the gradient of {name}"))
            })?;
        if std::mem::replace(&mut self.given[b][i], true) {
            return Err(DistError::Tensor(format!(
                "the gradient of {name} was handed over twice"
            )));
        }
        self.slots[b][i] = Some(g);
        self.missing[b] -= 1;
        if self.missing[b] == 0 {
            let grads = self.slots[b]
                .iter_mut()
                .map(|s| s.take())
                .collect::<Option<Vec<_>>>();
            let grads =
                grads.ok_or_else(|| DistError::Tensor(format!("bucket {b} is incomplete")))?;
            self.submitted[b] = self.started.elapsed();
            match &mut self.out {
                // A closed queue means the thread stopped on an error, which the join reports.
                Out::Thread(tx) => {
                    let _ = tx.send(Job { bucket: b, grads });
                }
                Out::Inline(inline) => inline.complete(b, grads)?,
            }
        }
        Ok(())
    }

    /// Whether `name`'s gradient was handed over.
    fn given(&self, name: &str) -> bool {
        self.plan
            .index
            .get(name)
            .is_some_and(|&(b, i)| self.given[b][i])
    }
}

/// Where backward hands its gradients.
pub struct Handover<'a> {
    to: To<'a>,
}

enum To<'a> {
    /// Kept here (alone).
    Collect(BTreeMap<String, Grad>),
    /// Bucketed, each complete bucket handed on.
    Buckets(Reducer<'a>),
}

impl Handover<'_> {
    /// Hands over `name`'s gradient (this rank's sum over its micro-batches).
    pub fn push(&mut self, name: &str, g: Grad) -> Result<()> {
        match &mut self.to {
            To::Collect(all) => {
                if all.insert(name.to_owned(), g).is_some() {
                    return Err(DistError::Tensor(format!(
                        "the gradient of {name} was handed over twice"
                    )));
                }
                Ok(())
            }
            To::Buckets(r) => r.push(name, g),
        }
    }

    /// Whether `name`'s gradient was handed over (a rank with nothing to differentiate hands over
    /// zeros for the rest: every rank takes part in every bucket).
    pub fn given(&self, name: &str) -> bool {
        match &self.to {
            To::Collect(all) => all.contains_key(name),
            To::Buckets(r) => r.given(name),
        }
    }
}

/// Runs `backward`, which hands this rank's gradients over, and sums them over the ranks of `comm` in
/// the buckets of `plan`, in `dtype` (results in f32; alone on a GPU, in the dtype backward gave them).
/// Returns `backward`'s result and the summed gradients with the time the reduction took.
pub fn reduce_gradients<R, E: From<DistError>>(
    comm: &mut Comm,
    plan: &Buckets,
    dtype: DType,
    backward: impl FnOnce(&mut Handover) -> std::result::Result<R, E>,
) -> std::result::Result<(R, Reduced), E> {
    match comm {
        Comm::Tcp(_) => return overlapped(comm, plan, dtype, backward),
        Comm::Single => {}
        #[cfg(feature = "nccl")]
        Comm::Nccl(_) => return reduce_gradients_inline(comm, plan, dtype, backward),
    }
    let mut h = Handover {
        to: To::Collect(BTreeMap::new()),
    };
    let out = backward(&mut h)?;
    let To::Collect(all) = h.to else {
        unreachable!("a collecting handover stays one")
    };
    // Alone on a GPU the gradients stay as backward gave them (the optimiser's kernels read bf16
    // too: no cast per parameter); on the CPU the optimiser's loops read f32.
    let grads = all
        .into_iter()
        .map(|(n, g)| {
            let g = if g.device().is_cpu() {
                g.to_dtype(DType::F32)?
            } else {
                g
            };
            Ok((n, g))
        })
        .collect::<Result<_>>()?;
    Ok((
        out,
        Reduced {
            grads,
            busy: Duration::ZERO,
            exposed: Duration::ZERO,
            submitted: vec![Duration::ZERO; plan.members.len()],
        },
    ))
}

/// What NCCL runs: `backward` hands its gradients over and each bucket's sum is started as soon as
/// the bucket is complete, in bucket order — with NCCL queued on its stream while the compute stream
/// goes on with backward (DDP's overlap) — then, after backward, the compute stream waits once for
/// all of them and the sums are cut back into gradients (f32). `busy` is the host's time starting
/// sums, `exposed` its time after backward (with NCCL neither waits for the GPU: the device's own
/// share is for a profile to show). Public so that the CPU ring, where a start is the whole sum, tests
/// the same bookkeeping.
pub fn reduce_gradients_inline<R, E: From<DistError>>(
    comm: &mut Comm,
    plan: &Buckets,
    dtype: DType,
    backward: impl FnOnce(&mut Handover) -> std::result::Result<R, E>,
) -> std::result::Result<(R, Reduced), E> {
    let inline = Inline {
        comm,
        dtype,
        next: 0,
        early: BTreeMap::new(),
        pending: Vec::new(),
        busy: Duration::ZERO,
    };
    let mut h = Handover {
        to: To::Buckets(Reducer::new(plan, Out::Inline(inline))),
    };
    let out = backward(&mut h)?;
    let To::Buckets(reducer) = h.to else {
        unreachable!("a bucketing handover stays one")
    };
    let Out::Inline(inline) = reducer.out else {
        unreachable!("an inline reducer stays one")
    };
    let waiting = Instant::now();
    if inline.next < plan.members.len() {
        let next = inline.next;
        return Err(
            DistError::Tensor(format!("the step ended before bucket {next} was complete")).into(),
        );
    }
    inline.comm.finish_queued()?;
    let mut grads = BTreeMap::new();
    for (members, pending) in plan.members.iter().zip(inline.pending) {
        for (n, g) in members.iter().zip(pending.finish()?) {
            grads.insert(n.clone(), g);
        }
    }
    let reduced = Reduced {
        grads,
        busy: inline.busy,
        exposed: waiting.elapsed(),
        submitted: reducer.submitted,
    };
    Ok((out, reduced))
}

/// Over the CPU ring: `backward` runs while a communication thread sums complete buckets.
fn overlapped<R, E: From<DistError>>(
    comm: &mut Comm,
    plan: &Buckets,
    dtype: DType,
    backward: impl FnOnce(&mut Handover) -> std::result::Result<R, E>,
) -> std::result::Result<(R, Reduced), E> {
    // The thread takes the ring itself (a `Comm` of a CUDA build is not `Send`, its TCP ring is) and
    // gives it back at the end.
    let Comm::Tcp(ring) = std::mem::replace(comm, Comm::Single) else {
        unreachable!("called with the CPU ring")
    };
    let (tx, rx) = channel::<Job>();
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            let mut own = Comm::Tcp(ring);
            let result = communicate(&mut own, plan, dtype, rx);
            let Comm::Tcp(ring) = own else {
                unreachable!("the thread's communicator stays the ring")
            };
            (ring, result)
        });
        let mut h = Handover {
            to: To::Buckets(Reducer::new(plan, Out::Thread(tx))),
        };
        let out = backward(&mut h);
        let To::Buckets(mut reducer) = h.to else {
            unreachable!("a ring handover stays one")
        };
        let submitted = std::mem::take(&mut reducer.submitted);
        drop(reducer);
        let waiting = Instant::now();
        let (ring, reduced) = worker
            .join()
            .map_err(|_| DistError::Tensor("the gradient communication thread panicked".into()))?;
        *comm = Comm::Tcp(ring);
        let exposed = waiting.elapsed();
        let out = out?;
        let (grads, busy) = reduced?;
        Ok((
            out,
            Reduced {
                grads,
                busy,
                exposed,
                submitted,
            },
        ))
    })
}

/// The communication thread: buckets in order, each summed over the ranks.
fn communicate(
    comm: &mut Comm,
    plan: &Buckets,
    dtype: DType,
    rx: Receiver<Job>,
) -> Result<(BTreeMap<String, Grad>, Duration)> {
    let mut early: BTreeMap<usize, Vec<Grad>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut busy = Duration::ZERO;
    for next in 0..plan.members.len() {
        // Buckets arrive in backward order; one that completes early waits for its turn.
        let grads = loop {
            if let Some(g) = early.remove(&next) {
                break g;
            }
            let Ok(job) = rx.recv() else {
                return Err(DistError::Tensor(format!(
                    "the step ended before bucket {next} was complete"
                )));
            };
            early.insert(job.bucket, job.grads);
        };
        let t0 = Instant::now();
        for (name, g) in plan.members[next]
            .iter()
            .zip(reduce_bucket(comm, grads, dtype)?)
        {
            out.insert(name.clone(), g);
        }
        busy += t0.elapsed();
    }
    Ok((out, busy))
}

/// Sums one bucket over the ranks (done when it returns on the CPU ring). Results in f32.
fn reduce_bucket(comm: &mut Comm, grads: Vec<Grad>, dtype: DType) -> Result<Vec<Grad>> {
    start_bucket(comm, grads, dtype)?.finish()
}

/// A bucket whose sum has been started: the buffer the collective works on in place (kept alive
/// until the sum is read), and how to cut it back into gradients.
enum Pending {
    Dense {
        flat: Tensor,
        shapes: Vec<Shape>,
    },
    Rows {
        ids: Vec<u32>,
        laid_out: Tensor,
        rows: usize,
    },
}

/// Starts summing one bucket over the ranks: dense gradients as one flat buffer in `dtype`, a row
/// gradient over the union of the ranks' rows ([`Comm::queue_all_reduce_tensor`]: with NCCL read
/// it only after [`Comm::finish_queued`]).
fn start_bucket(comm: &mut Comm, grads: Vec<Grad>, dtype: DType) -> Result<Pending> {
    if let [Grad::Rows { ids, values, rows }] = &grads[..] {
        return start_rows(comm, ids, values, *rows, dtype);
    }
    let mut shapes = Vec::with_capacity(grads.len());
    let dense: Vec<Tensor> = grads
        .iter()
        .map(|g| match g {
            Grad::Dense(t) => {
                shapes.push(t.shape().clone());
                Ok(t.to_dtype(dtype)?.flatten_all()?)
            }
            Grad::Rows { .. } => Err(DistError::Tensor("a row gradient shares a bucket".into())),
        })
        .collect::<Result<_>>()?;
    let flat = Tensor::cat(&dense, 0)?;
    comm.queue_all_reduce_tensor(&flat)?;
    Ok(Pending::Dense { flat, shapes })
}

impl Pending {
    /// The summed gradients in f32 (views of one buffer for a dense bucket).
    fn finish(self) -> Result<Vec<Grad>> {
        match self {
            Pending::Dense { flat, shapes } => {
                let flat = flat.to_dtype(DType::F32)?;
                let mut at = 0;
                shapes
                    .iter()
                    .map(|shape| {
                        let n = shape.elem_count();
                        let part = flat.narrow(0, at, n)?.reshape(shape)?;
                        at += n;
                        Ok(Grad::Dense(part))
                    })
                    .collect()
            }
            Pending::Rows {
                ids,
                laid_out,
                rows,
            } => Ok(vec![Grad::Rows {
                ids,
                values: laid_out.to_dtype(DType::F32)?,
                rows,
            }]),
        }
    }
}

/// Starts a row gradient's sum over the ranks: the union of their row ids (every rank gathers them:
/// host values over the TCP ring), then one all-reduce of the values laid out over that union.
fn start_rows(
    comm: &mut Comm,
    ids: &[u32],
    values: &Tensor,
    rows: usize,
    dtype: DType,
) -> Result<Pending> {
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    let mut all: Vec<u32> = Vec::new();
    for part in comm.all_gather(&bytes)? {
        let theirs: Vec<u32> = part
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        all = union(&all, &theirs);
    }
    let laid_out = scatter_rows(&all, &[(ids, &values.to_dtype(DType::F32)?)])?.to_dtype(dtype)?;
    comm.queue_all_reduce_tensor(&laid_out)?;
    Ok(Pending::Rows {
        ids: all,
        laid_out,
        rows,
    })
}

/// Sums `grads` over all ranks in buckets of about `bucket_bytes` (cut as [`Buckets::plan`] cuts a
/// step's gradients): each bucket's tensors flattened into one buffer, the buffer all-reduced in place,
/// views of it returned in the original shapes and dtype.
pub fn all_reduce_bucketed(
    comm: &mut Comm,
    grads: &[Tensor],
    bucket_bytes: usize,
) -> Result<Vec<Tensor>> {
    if matches!(comm, Comm::Single) {
        return Ok(grads.to_vec());
    }
    let order: Vec<(String, usize, bool)> = grads
        .iter()
        .enumerate()
        .map(|(i, g)| {
            (
                i.to_string(),
                g.elem_count() * g.dtype().size_in_bytes(),
                false,
            )
        })
        .collect();
    let plan = Buckets::plan(&order, bucket_bytes);
    let mut out = Vec::with_capacity(grads.len());
    for members in &plan.members {
        let bucket: Vec<&Tensor> = members
            .iter()
            .map(|i| &grads[i.parse::<usize>().unwrap_or_default()])
            .collect();
        let flat: Vec<Tensor> = bucket
            .iter()
            .map(|g| g.flatten_all())
            .collect::<candle_core::Result<_>>()?;
        let buffer = Tensor::cat(&flat, 0)?;
        comm.all_reduce_tensor(&buffer)?;
        let mut offset = 0;
        for g in bucket {
            let n = g.elem_count();
            out.push(buffer.narrow(0, offset, n)?.reshape(g.shape())?);
            offset += n;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_process_is_the_identity() {
        let mut comm = Comm::Single;
        let t = Tensor::new(&[1f32, 2., 3.], &candle_core::Device::Cpu).unwrap();
        comm.all_reduce_tensor(&t).unwrap();
        let out = all_reduce_bucketed(&mut comm, std::slice::from_ref(&t), 4).unwrap();
        assert_eq!(out[0].to_vec1::<f32>().unwrap(), [1., 2., 3.]);
    }

    fn order(sizes: &[(usize, bool)]) -> Vec<(String, usize, bool)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &(s, r))| (format!("p{i}"), s, r))
            .collect()
    }

    #[test]
    fn buckets_follow_backward_order_and_rows_stand_alone() {
        let b = Buckets::plan(
            &order(&[
                (10, false),
                (10, false),
                (30, false),
                (5, false),
                (100, true),
            ]),
            20,
        );
        assert_eq!(
            b.members,
            vec![
                vec!["p0".to_string(), "p1".into()],
                vec!["p2".into()],
                vec!["p3".into()],
                vec!["p4".into()]
            ]
        );
    }
}
