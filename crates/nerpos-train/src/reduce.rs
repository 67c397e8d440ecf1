//! Gradients summed over the ranks while backward is still running (what PyTorch DDP does).
//!
//! The model's backward hands out gradients one at a time, from the head down. They are grouped in
//! buckets of about `bucket_bytes` in that order (the same buckets on every rank: the parameters and
//! their sizes are the same); a bucket that is complete goes to a communication thread, which sums it
//! over the ranks while the layers below are being differentiated. The thread takes buckets strictly in
//! order, so results do not depend on timing. The word-embedding gradient (rows, last) is its own
//! bucket: the union of the ranks' rows, then their values.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use nerpos_dist::Comm;
use nerpos_model::Grad;

/// The bucket plan: parameter names in backward order, cut into buckets.
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

/// What the communication thread did.
pub struct Reduced {
    pub grads: BTreeMap<String, Grad>,
    /// Time spent in collectives.
    pub busy: Duration,
    /// When each bucket was handed over, relative to the reducer's start (for tests and profiles).
    pub submitted: Vec<Duration>,
}

/// Collects one step's gradients into buckets and hands complete buckets to the communication thread.
pub struct Reducer<'a> {
    plan: &'a Buckets,
    slots: Vec<Vec<Option<Grad>>>,
    /// Which gradients have been handed over.
    given: Vec<Vec<bool>>,
    missing: Vec<usize>,
    tx: Sender<Job>,
    started: Instant,
    submitted: Vec<Duration>,
}

impl<'a> Reducer<'a> {
    /// A reducer feeding `tx` (the communication thread's queue).
    fn new(plan: &'a Buckets, tx: Sender<Job>) -> Reducer<'a> {
        Reducer {
            slots: plan.members.iter().map(|m| vec![None; m.len()]).collect(),
            given: plan.members.iter().map(|m| vec![false; m.len()]).collect(),
            missing: plan.members.iter().map(Vec::len).collect(),
            plan,
            tx,
            started: Instant::now(),
            submitted: vec![Duration::ZERO; plan.members.len()],
        }
    }

    /// Hands over `name`'s gradient (this rank's sum over its micro-batches); sends its bucket once
    /// complete.
    pub fn push(&mut self, name: &str, g: Grad) -> anyhow::Result<()> {
        let &(b, i) = self
            .plan
            .index
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("no bucket holds the gradient of {name}"))?;
        if std::mem::replace(&mut self.given[b][i], true) {
            anyhow::bail!("the gradient of {name} was handed over twice");
        }
        self.slots[b][i] = Some(g);
        self.missing[b] -= 1;
        if self.missing[b] == 0 {
            let grads = self.slots[b]
                .iter_mut()
                .map(|s| s.take())
                .collect::<Option<Vec<_>>>();
            let grads = grads.ok_or_else(|| anyhow::anyhow!("bucket {b} is incomplete"))?;
            self.submitted[b] = self.started.elapsed();
            // A closed queue means the thread stopped on an error, which `finish` reports.
            let _ = self.tx.send(Job { bucket: b, grads });
        }
        Ok(())
    }

    /// The names not handed over yet (a rank that had nothing to differentiate hands over zeros).
    pub fn pending(&self) -> Vec<String> {
        self.plan
            .members
            .iter()
            .zip(&self.given)
            .flat_map(|(m, given)| {
                m.iter()
                    .zip(given)
                    .filter(|(_, g)| !**g)
                    .map(|(n, _)| n.clone())
            })
            .collect()
    }
}

/// Runs `backward` (which hands gradients to the reducer) while a communication thread sums complete
/// buckets over the ranks of `comm` (the CPU ring) in `dtype`; returns `backward`'s result, the summed
/// gradients (in f32), the thread's accounting, and the time waited for the thread after `backward`
/// (the exposed all-reduce).
pub fn overlapped<R>(
    comm: &mut Comm,
    plan: &Buckets,
    dtype: DType,
    backward: impl FnOnce(&mut Reducer) -> anyhow::Result<R>,
) -> anyhow::Result<(R, Reduced, Duration)> {
    // The thread takes the ring itself (a `Comm` of a CUDA build is not `Send`, its TCP ring is) and
    // gives it back at the end.
    let Comm::Tcp(ring) = std::mem::replace(comm, Comm::Single) else {
        anyhow::bail!("gradients are reduced during backward over the CPU ring only");
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
        let mut reducer = Reducer::new(plan, tx);
        let out = backward(&mut reducer);
        let submitted = std::mem::take(&mut reducer.submitted);
        drop(reducer);
        let waiting = Instant::now();
        let (ring, reduced) = worker
            .join()
            .map_err(|_| anyhow::anyhow!("the gradient communication thread panicked"))?;
        *comm = Comm::Tcp(ring);
        let exposed = waiting.elapsed();
        let out = out?;
        let (grads, busy) = reduced?;
        Ok((
            out,
            Reduced {
                grads,
                busy,
                submitted,
            },
            exposed,
        ))
    })
}

/// The communication thread: buckets in order, each summed over the ranks.
fn communicate(
    comm: &mut Comm,
    plan: &Buckets,
    dtype: DType,
    rx: Receiver<Job>,
) -> anyhow::Result<(BTreeMap<String, Grad>, Duration)> {
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
                anyhow::bail!("the step ended before bucket {next} was complete");
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

/// Sums one bucket over the ranks: dense gradients as one flat buffer, a row gradient over the union
/// of the ranks' rows. Results in f32.
pub fn reduce_bucket(comm: &mut Comm, grads: Vec<Grad>, dtype: DType) -> anyhow::Result<Vec<Grad>> {
    if let [Grad::Rows { ids, values, rows }] = &grads[..] {
        return Ok(vec![reduce_rows(comm, ids, values, *rows, dtype)?]);
    }
    let dense: Vec<Tensor> = grads
        .iter()
        .map(|g| match g {
            Grad::Dense(t) => Ok(t.to_dtype(dtype)?.flatten_all()?),
            Grad::Rows { .. } => anyhow::bail!("a row gradient shares a bucket"),
        })
        .collect::<anyhow::Result<_>>()?;
    let flat = Tensor::cat(&dense, 0)?;
    comm.all_reduce_tensor(&flat)?;
    let flat = flat.to_dtype(DType::F32)?;
    let mut at = 0;
    grads
        .iter()
        .map(|g| {
            let Grad::Dense(t) = g else {
                unreachable!("checked above")
            };
            let n = t.elem_count();
            let part = flat.narrow(0, at, n)?.reshape(t.shape())?;
            at += n;
            Ok(Grad::Dense(part))
        })
        .collect()
}

/// A row gradient summed over the ranks: the union of their row ids (every rank gathers them), then
/// one all-reduce of the values laid out over that union.
fn reduce_rows(
    comm: &mut Comm,
    ids: &[u32],
    values: &Tensor,
    rows: usize,
    dtype: DType,
) -> anyhow::Result<Grad> {
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    let mut all: Vec<u32> = Vec::new();
    for part in comm.all_gather(&bytes)? {
        let theirs: Vec<u32> = part
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        all = nerpos_model::grad::union(&all, &theirs);
    }
    let laid_out = nerpos_model::grad::scatter_rows(&all, &[(ids, &values.to_dtype(DType::F32)?)])?
        .to_dtype(dtype)?;
    comm.all_reduce_tensor(&laid_out)?;
    Ok(Grad::Rows {
        ids: all,
        values: laid_out.to_dtype(DType::F32)?,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
