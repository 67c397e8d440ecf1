//! The CPU backend: processes connected in a ring over TCP.
//!
//! All-reduce is a ring reduce-scatter followed by a ring all-gather: each process sends and receives
//! 2·(W−1)/W of the buffer, whatever W. Each segment is summed once, in a fixed order around the ring,
//! and then copied to every rank, so every rank ends with the same bits. Sending runs on a scoped
//! thread while the calling thread receives, so neither side of a link ever waits for the other's
//! buffer to drain.

use std::net::{TcpListener, UdpSocket};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use crate::DistError;
use crate::element::Element;
use crate::env::Rendezvous;
use crate::store::{StoreClient, StoreServer};
use crate::wire::{Header, Link, Op, Timeouts};

const ABORT_KEY: &str = "abort";
/// Bytes received per read into the reduction scratch buffer.
const CHUNK_BYTES: usize = 1 << 20;

/// The abort reason some rank posted in the store, if any.
fn posted_abort(store: &Mutex<StoreClient>) -> Option<String> {
    let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
    s.get(ABORT_KEY, Duration::ZERO)
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// What a blocked read or write calls at each poll: the first time in collective `seq`, it records in
/// the store that this rank is waiting in it (so that a timeout can tell the stalled rank from the ranks
/// merely waiting for it); every time, it returns an abort posted by another rank, if any.
fn watcher<'a>(
    store: &'a Mutex<StoreClient>,
    posted: &'a AtomicU64,
    rank: usize,
    seq: u64,
) -> impl Fn() -> Option<String> + Sync + 'a {
    move || {
        if posted.swap(seq, Ordering::Relaxed) != seq {
            let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
            let _ = s.set(&format!("waiting/{rank}"), &seq.to_le_bytes());
        }
        posted_abort(store)
    }
}

/// Takes segment `k` back from the sending thread (waiting for it if it is still being sent).
fn take<'a, T>(
    slots: &mut [Option<&'a mut [T]>],
    sent: &mpsc::Receiver<(usize, &'a mut [T])>,
    k: usize,
) -> Result<&'a mut [T], DistError> {
    while slots[k].is_none() {
        let (j, seg) = sent
            .recv()
            .map_err(|_| DistError::Aborted("the sending thread stopped".into()))?;
        slots[j] = Some(seg);
    }
    Ok(slots[k].take().expect("just checked"))
}

/// A process's connections: to the store, and to its ring neighbours.
pub struct TcpComm {
    rank: usize,
    world: usize,
    next: Option<Link>,
    prev: Option<Link>,
    store: Mutex<StoreClient>,
    _server: Option<StoreServer>,
    t: Timeouts,
    seq: u64,
    /// The last collective this rank recorded itself as waiting in (see [`watcher`]).
    waiting_posted: AtomicU64,
}

/// The address other hosts reach this one at: `NERPOS_DIST_ADDR`, else the local address of the route
/// to the master (no packet is sent), else loopback.
fn advertised_ip(master: &str, port: u16) -> String {
    if let Ok(a) = std::env::var("NERPOS_DIST_ADDR") {
        return a;
    }
    UdpSocket::bind(("0.0.0.0", 0))
        .and_then(|s| s.connect((master, port)).map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}

impl TcpComm {
    /// Joins the job described by `rdv`: rank 0 starts the store, every rank publishes its ring
    /// address, rank 0 checks that all `world_size` ranks joined and agree on the world, and each rank
    /// connects to the next one around the ring.
    pub fn connect(rdv: &Rendezvous, t: Timeouts) -> Result<TcpComm, DistError> {
        let (rank, world) = (rdv.rank, rdv.world_size);
        let server = (rank == 0)
            .then(|| StoreServer::start(rdv.master_port))
            .transpose()?;
        let store_host = if rank == 0 {
            "127.0.0.1"
        } else {
            rdv.master_addr.as_str()
        };
        let mut comm = TcpComm {
            rank,
            world,
            next: None,
            prev: None,
            store: Mutex::new(StoreClient::connect(
                store_host,
                rdv.master_port,
                t.connect,
                rank,
            )?),
            _server: server,
            t,
            seq: 0,
            waiting_posted: AtomicU64::new(0),
        };
        if world == 1 {
            return Ok(comm);
        }
        let listener = TcpListener::bind(("0.0.0.0", 0)).map_err(|e| {
            DistError::Rendezvous(format!("rank {rank} cannot open a listening socket: {e}"))
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| DistError::Rendezvous(e.to_string()))?
            .port();
        let me = format!(
            "{}:{port}",
            advertised_ip(&rdv.master_addr, rdv.master_port)
        );
        comm.store_set(&format!("rank/{rank}"), format!("{world} {me}").as_bytes())?;

        let peers = if rank == 0 {
            let peers = comm.gather_peers(world)?;
            comm.store_set("peers", peers.join("\n").as_bytes())?;
            peers
        } else {
            comm.wait_for_peers()?
        };
        if peers.len() != world {
            return Err(DistError::Rendezvous(format!(
                "rank {rank} has WORLD_SIZE={world} but rank 0 lists {} peers",
                peers.len()
            )));
        }
        let (next, prev) = ((rank + 1) % world, (rank + world - 1) % world);
        comm.next = Some(comm.dial(next, &peers[next])?);
        comm.prev = Some(comm.accept(&listener, prev, &peers[prev])?);
        info!(rank, world, next = %peers[next], "joined the ring");
        Ok(comm)
    }

    /// Ranks but 0: waits for rank 0's peer list, watching for the abort rank 0 posts if the world
    /// is incomplete or inconsistent.
    fn wait_for_peers(&self) -> Result<Vec<String>, DistError> {
        // Rank 0 gives up on missing ranks after `connect`; wait a little longer to read why.
        let deadline = Instant::now() + self.t.connect + 4 * self.t.poll;
        loop {
            let got = self
                .store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get("peers", self.t.poll)?;
            if let Some(v) = got {
                return Ok(String::from_utf8_lossy(&v)
                    .lines()
                    .map(str::to_owned)
                    .collect());
            }
            if let Some(reason) = self.abort_reason() {
                return Err(DistError::Aborted(reason));
            }
            if Instant::now() >= deadline {
                return Err(DistError::Rendezvous(format!(
                    "rank {}: rank 0 did not list the peers within {:.0} s",
                    self.rank,
                    self.t.connect.as_secs_f64()
                )));
            }
        }
    }

    /// Rank 0: waits for every rank's address, checking that all report the same world size.
    fn gather_peers(&self, world: usize) -> Result<Vec<String>, DistError> {
        let deadline = Instant::now() + self.t.connect;
        let mut peers: Vec<Option<String>> = vec![None; world];
        loop {
            for (r, slot) in peers.iter_mut().enumerate().filter(|(_, s)| s.is_none()) {
                let got = self
                    .store
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&format!("rank/{r}"), Duration::from_millis(50))?;
                if let Some(v) = got {
                    let v = String::from_utf8_lossy(&v).into_owned();
                    let (w, addr) = v.split_once(' ').unwrap_or(("?", ""));
                    if w != world.to_string() {
                        let msg = format!(
                            "rank {r} has WORLD_SIZE={w} but rank 0 has {world}: the launch is inconsistent"
                        );
                        return Err(self.abort_rendezvous(msg));
                    }
                    *slot = Some(addr.to_owned());
                }
            }
            if peers.iter().all(Option::is_some) {
                return Ok(peers.into_iter().flatten().collect());
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> = (0..world)
                    .filter(|&r| peers[r].is_none())
                    .map(|r| r.to_string())
                    .collect();
                let msg = format!(
                    "rank(s) {} of {world} did not join within {:.0} s (is WORLD_SIZE right, and did every process start?)",
                    missing.join(", "),
                    self.t.connect.as_secs_f64()
                );
                return Err(self.abort_rendezvous(msg));
            }
        }
    }

    /// Rank 0 failing the rendezvous: post why, and keep the store up a moment so the others read it.
    fn abort_rendezvous(&self, msg: String) -> DistError {
        self.post_abort(&msg);
        std::thread::sleep(4 * self.t.poll);
        DistError::Rendezvous(msg)
    }

    fn dial(&self, peer: usize, addr: &str) -> Result<Link, DistError> {
        let deadline = Instant::now() + self.t.connect;
        loop {
            match std::net::TcpStream::connect(addr) {
                Ok(s) => {
                    let mut link = Link::new(s, peer, addr.to_owned(), &self.t)?;
                    let hello = [
                        (self.rank as u64).to_le_bytes(),
                        (self.world as u64).to_le_bytes(),
                    ]
                    .concat();
                    link.write_full(&hello, &self.t, &|| None)?;
                    return Ok(link);
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(DistError::peer(
                        peer,
                        addr,
                        format!(
                            "cannot connect within {:.0} s: {e}",
                            self.t.connect.as_secs_f64()
                        ),
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn accept(&self, listener: &TcpListener, peer: usize, addr: &str) -> Result<Link, DistError> {
        let deadline = Instant::now() + self.t.connect;
        listener
            .set_nonblocking(true)
            .map_err(|e| DistError::Rendezvous(e.to_string()))?;
        loop {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)
                        .map_err(|e| DistError::Rendezvous(e.to_string()))?;
                    let mut link = Link::new(s, peer, addr.to_owned(), &self.t)?;
                    let mut hello = [0u8; 16];
                    link.read_full(&mut hello, &self.t, &|| None)?;
                    let their_rank =
                        u64::from_le_bytes(hello[..8].try_into().expect("8 bytes")) as usize;
                    let their_world =
                        u64::from_le_bytes(hello[8..].try_into().expect("8 bytes")) as usize;
                    if their_rank == peer && their_world == self.world {
                        return Ok(link);
                    }
                    debug!(
                        their_rank,
                        their_world, "ignoring a connection that is not from the previous rank"
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(DistError::peer(
                            peer,
                            addr,
                            format!(
                                "did not connect within {:.0} s",
                                self.t.connect.as_secs_f64()
                            ),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(DistError::Rendezvous(format!("accepting rank {peer}: {e}"))),
            }
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    /// Sets a key in the rendezvous store (e.g. rank 0 publishing the NCCL unique id).
    pub fn store_set(&self, key: &str, value: &[u8]) -> Result<(), DistError> {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(key, value)
    }

    /// Gets a key from the rendezvous store, waiting for the connect timeout.
    pub fn store_get(&self, key: &str) -> Result<Vec<u8>, DistError> {
        let got = self
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key, self.t.connect)?;
        got.ok_or_else(|| {
            DistError::Rendezvous(format!(
                "rank {}: no {key:?} in the store within {:.0} s",
                self.rank,
                self.t.connect.as_secs_f64()
            ))
        })
    }

    /// The reason another rank posted for aborting, if any.
    fn abort_reason(&self) -> Option<String> {
        posted_abort(&self.store)
    }

    /// Posts why this rank is giving up, unless someone already did.
    fn post_abort(&self, msg: &str) {
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(store.get(ABORT_KEY, Duration::ZERO), Ok(None)) {
            let _ = store.set(ABORT_KEY, format!("rank {}: {msg}", self.rank).as_bytes());
        }
    }

    /// Posts the error for the other ranks (unless it came from them) and returns it. A stall is
    /// traced to the ranks that never started waiting in this collective: every rank stuck behind a
    /// stalled one times out at about the same time, and each should name the culprit, not its
    /// neighbour.
    fn fail(&self, e: DistError) -> DistError {
        let e = match e {
            // A neighbour that failed posts its reason before it exits; only a killed one does not.
            DistError::Peer { .. } | DistError::Stalled { .. } => match posted_abort(&self.store) {
                Some(reason) => DistError::Aborted(reason),
                None if matches!(e, DistError::Stalled { .. }) => self.explain_stall().unwrap_or(e),
                None => e,
            },
            e => e,
        };
        if !matches!(e, DistError::Aborted(_)) {
            self.post_abort(&e.to_string());
        }
        if self.rank == 0 {
            // Rank 0's process holds the store: stay a moment so the others can read why.
            std::thread::sleep(2 * self.t.poll);
        }
        e
    }

    fn explain_stall(&self) -> Option<DistError> {
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let (mut stalled, mut waiting) = (Vec::new(), Vec::new());
        for r in 0..self.world {
            // An unreachable store (rank 0 gone) explains nothing: keep the plain timeout.
            let seq = store
                .get(&format!("waiting/{r}"), Duration::ZERO)
                .ok()?
                .and_then(|v| v.try_into().ok().map(u64::from_le_bytes));
            if r == self.rank || seq.is_some_and(|s| s >= self.seq) {
                waiting.push(r.to_string());
            } else {
                stalled.push(r.to_string());
            }
        }
        (!stalled.is_empty()).then(|| {
            DistError::Hung(format!(
                "rank(s) {} did not enter collective #{} within {:.0} s (stalled, hung, or busy elsewhere; \
                 NERPOS_DIST_TIMEOUT sets the limit); rank(s) {} were waiting in it",
                stalled.join(", "),
                self.seq,
                self.t.op.as_secs_f64(),
                waiting.join(", ")
            ))
        })
    }

    /// Sums `buf` over all ranks, in place; every rank ends with the same bits.
    pub fn all_reduce_sum<T: Element>(&mut self, buf: &mut [T]) -> Result<(), DistError> {
        if self.world == 1 {
            return Ok(());
        }
        self.seq += 1;
        let result = self.ring_all_reduce(buf);
        result.map_err(|e| self.fail(e))
    }

    /// The ring algorithm: reduce-scatter, then all-gather, of `w` segments; a thread sends while
    /// this one receives and adds.
    fn ring_all_reduce<T: Element>(&mut self, buf: &mut [T]) -> Result<(), DistError> {
        let (w, r, seq, t) = (self.world, self.rank, self.seq, self.t);
        let (bounds, mut slots) = segments(buf, w);
        let header = |k: usize| Header {
            op: Op::AllReduce,
            dtype: T::DTYPE,
            seq,
            len: ((bounds[k + 1] - bounds[k]) * size_of::<T>()) as u64,
        };
        let check = watcher(&self.store, &self.waiting_posted, self.rank, self.seq);
        let watch: &(dyn Fn() -> Option<String> + Sync) = &check;
        let (next, prev) = match (&mut self.next, &mut self.prev) {
            (Some(n), Some(p)) => (n, p),
            _ => unreachable!("a world larger than 1 has both neighbours"),
        };
        let at = |i: isize| i.rem_euclid(w as isize) as usize;

        std::thread::scope(|scope| -> Result<(), DistError> {
            let (to_send, outbox) = mpsc::channel::<(usize, &mut [T])>();
            let (returned, sent) = mpsc::channel::<(usize, &mut [T])>();
            let sender = scope.spawn(move || -> Result<(), DistError> {
                for (k, seg) in outbox {
                    next.send(header(k), bytemuck::cast_slice(seg), &t, watch)?;
                    if returned.send((k, seg)).is_err() {
                        break;
                    }
                }
                Ok(())
            });
            let receive = || -> Result<(), DistError> {
                let mut scratch: Vec<T> = vec![T::zeroed(); (CHUNK_BYTES / size_of::<T>()).max(1)];
                let give = |k: usize, seg| {
                    to_send
                        .send((k, seg))
                        .map_err(|_| DistError::Aborted("the sending thread stopped".into()))
                };
                let first = take(&mut slots, &sent, r)?;
                give(r, first)?;
                // Reduce-scatter: receive segment r-s-1 and add it into ours; pass it on.
                for s in 0..w - 1 {
                    let k = at(r as isize - s as isize - 1);
                    let seg = take(&mut slots, &sent, k)?;
                    prev.expect(header(k), true, &t, watch)?;
                    let mut done = 0;
                    while done < seg.len() {
                        let n = (seg.len() - done).min(scratch.len());
                        prev.read_full(bytemuck::cast_slice_mut(&mut scratch[..n]), &t, watch)?;
                        T::add_into(&mut seg[done..done + n], &scratch[..n]);
                        done += n;
                    }
                    give(k, seg)?;
                }
                // All-gather: receive the reduced segment r-s and pass it on (the last one stays).
                for s in 0..w - 1 {
                    let k = at(r as isize - s as isize);
                    let seg = take(&mut slots, &sent, k)?;
                    prev.expect(header(k), true, &t, watch)?;
                    prev.read_full(bytemuck::cast_slice_mut(seg), &t, watch)?;
                    if s < w - 2 {
                        give(k, seg)?;
                    }
                }
                drop(to_send);
                Ok(())
            };
            let received = receive();
            let sent_result = sender
                .join()
                .unwrap_or_else(|_| Err(DistError::Aborted("the sending thread panicked".into())));
            match (received, sent_result) {
                (Ok(()), Ok(())) => Ok(()),
                // Prefer the error that names a peer over one that only reports the other thread.
                (Err(DistError::Aborted(_)), Err(e)) | (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            }
        })
    }

    /// Copies `root`'s `buf` to every rank (same length everywhere), forwarded around the ring in
    /// chunks so that large buffers stream.
    pub fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<(), DistError> {
        if self.world == 1 {
            return Ok(());
        }
        self.seq += 1;
        let result = self.ring_broadcast(buf, root);
        result.map_err(|e| self.fail(e))
    }

    fn ring_broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<(), DistError> {
        let (w, r, t) = (self.world, self.rank, self.t);
        let h = Header {
            op: Op::Broadcast,
            dtype: 0,
            seq: self.seq,
            len: buf.len() as u64,
        };
        let check = watcher(&self.store, &self.waiting_posted, self.rank, self.seq);
        let (next, prev) = match (&mut self.next, &mut self.prev) {
            (Some(n), Some(p)) => (n, p),
            _ => unreachable!("a world larger than 1 has both neighbours"),
        };
        let forward = (r + 1) % w != root;
        if r == root {
            return next.send(h, buf, &t, &check);
        }
        prev.expect(h, true, &t, &check)?;
        if forward {
            next.write_full(&h.encode(), &t, &check)?;
        }
        for chunk in buf.chunks_mut(CHUNK_BYTES) {
            prev.read_full(chunk, &t, &check)?;
            if forward {
                next.write_full(chunk, &t, &check)?;
            }
        }
        Ok(())
    }

    /// Every rank's `value` (small: counts, metrics, hashes), in rank order.
    pub fn all_gather(&mut self, value: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        if self.world == 1 {
            return Ok(vec![value.to_vec()]);
        }
        self.seq += 1;
        let result = self.ring_all_gather(value, Op::AllGather);
        result.map_err(|e| self.fail(e))
    }

    /// Returns once every rank has called it.
    pub fn barrier(&mut self) -> Result<(), DistError> {
        if self.world == 1 {
            return Ok(());
        }
        self.seq += 1;
        let result = self.ring_all_gather(&[], Op::Barrier).map(|_| ());
        result.map_err(|e| self.fail(e))
    }

    fn ring_all_gather(&mut self, value: &[u8], op: Op) -> Result<Vec<Vec<u8>>, DistError> {
        let (w, r, seq, t) = (self.world, self.rank, self.seq, self.t);
        let mut items: Vec<Option<Vec<u8>>> = vec![None; w];
        items[r] = Some(value.to_vec());
        let check = watcher(&self.store, &self.waiting_posted, self.rank, self.seq);
        let watch: &(dyn Fn() -> Option<String> + Sync) = &check;
        let (next, prev) = match (&mut self.next, &mut self.prev) {
            (Some(n), Some(p)) => (n, p),
            _ => unreachable!("a world larger than 1 has both neighbours"),
        };
        std::thread::scope(|scope| -> Result<(), DistError> {
            let (to_send, outbox) = mpsc::channel::<Vec<u8>>();
            let sender = scope.spawn(move || -> Result<(), DistError> {
                for v in outbox {
                    let h = Header {
                        op,
                        dtype: 0,
                        seq,
                        len: v.len() as u64,
                    };
                    next.send(h, &v, &t, watch)?;
                }
                Ok(())
            });
            let receive = || -> Result<(), DistError> {
                let stop = |_| DistError::Aborted("the sending thread stopped".into());
                to_send.send(value.to_vec()).map_err(stop)?;
                for s in 0..w - 1 {
                    let k = (r + w - s - 1) % w;
                    let want = Header {
                        op,
                        dtype: 0,
                        seq,
                        len: 0,
                    };
                    let len = prev.expect(want, false, &t, watch)?;
                    let mut v = vec![0u8; len as usize];
                    prev.read_full(&mut v, &t, watch)?;
                    if s < w - 2 {
                        to_send.send(v.clone()).map_err(stop)?;
                    }
                    items[k] = Some(v);
                }
                drop(to_send);
                Ok(())
            };
            let received = receive();
            let sent = sender
                .join()
                .unwrap_or_else(|_| Err(DistError::Aborted("the sending thread panicked".into())));
            match (received, sent) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(DistError::Aborted(_)), Err(e)) | (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            }
        })?;
        Ok(items.into_iter().map(|v| v.unwrap_or_default()).collect())
    }
}

/// `buf` cut into `w` near-equal segments: their bounds (`w + 1`) and the segments.
fn segments<T>(buf: &mut [T], w: usize) -> (Vec<usize>, Vec<Option<&mut [T]>>) {
    let bounds: Vec<usize> = (0..=w).map(|k| buf.len() * k / w).collect();
    let mut slots = Vec::with_capacity(w);
    let mut rest = buf;
    for k in 0..w {
        let (seg, tail) = rest.split_at_mut(bounds[k + 1] - bounds[k]);
        slots.push(Some(seg));
        rest = tail;
    }
    (bounds, slots)
}
