//! Sockets to peers: reads and writes that fail within a bounded time, name the peer, and notice an
//! abort another rank has posted while they wait.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::DistError;

/// How long to wait before calling a silent peer stalled, and how often to look for an abort meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Rendezvous: reaching the store and every peer joining.
    pub connect: Duration,
    /// A collective: the longest a peer may send or take nothing.
    pub op: Duration,
    /// Granularity of waiting: how often a blocked read or write checks for an abort.
    pub poll: Duration,
}

impl Timeouts {
    /// `NERPOS_DIST_TIMEOUT` (seconds, collectives; default 300) and `NERPOS_DIST_CONNECT_TIMEOUT`
    /// (seconds, rendezvous; default 120).
    pub fn from_env() -> Result<Timeouts, DistError> {
        let secs = |k: &str, default: f64| -> Result<Duration, DistError> {
            match std::env::var(k) {
                Err(_) => Ok(Duration::from_secs_f64(default)),
                Ok(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        DistError::Env(format!("{k}={v:?} is not a positive number of seconds"))
                    }),
            }
        };
        Ok(Timeouts {
            connect: secs("NERPOS_DIST_CONNECT_TIMEOUT", 120.0)?,
            op: secs("NERPOS_DIST_TIMEOUT", 300.0)?,
            poll: Duration::from_millis(500),
        })
    }
}

/// A reason posted by some rank for everyone to stop, if any (checked while waiting).
pub type Watch<'a> = &'a (dyn Fn() -> Option<String> + Sync);

/// A connected socket to one peer.
pub struct Link {
    stream: TcpStream,
    pub peer: usize,
    pub addr: String,
}

impl Link {
    pub fn new(
        stream: TcpStream,
        peer: usize,
        addr: String,
        t: &Timeouts,
    ) -> Result<Link, DistError> {
        let io = |e: std::io::Error| DistError::peer(peer, &addr, format!("socket setup: {e}"));
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(t.poll)).map_err(io)?;
        stream.set_write_timeout(Some(t.poll)).map_err(io)?;
        Ok(Link { stream, peer, addr })
    }

    pub fn try_clone(&self) -> Result<Link, DistError> {
        Ok(Link {
            stream: self
                .stream
                .try_clone()
                .map_err(|e| DistError::peer(self.peer, &self.addr, e.to_string()))?,
            peer: self.peer,
            addr: self.addr.clone(),
        })
    }

    fn wait_error(
        &self,
        e: std::io::Error,
        last: Instant,
        t: &Timeouts,
        watch: Watch,
        doing: &str,
    ) -> Option<DistError> {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted => {
                if let Some(reason) = watch() {
                    return Some(DistError::Aborted(reason));
                }
                (last.elapsed() > t.op).then(|| DistError::Stalled {
                    peer: self.peer,
                    addr: self.addr.clone(),
                    what: format!(
                        "{doing} nothing for {:.0} s (stalled or hung; NERPOS_DIST_TIMEOUT sets the limit)",
                        t.op.as_secs_f64()
                    ),
                })
            }
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::BrokenPipe
            | ErrorKind::ConnectionAborted => Some(DistError::peer(
                self.peer,
                &self.addr,
                format!("connection lost ({e}): the process exited or crashed"),
            )),
            _ => Some(DistError::peer(self.peer, &self.addr, e.to_string())),
        }
    }

    /// Fills `buf`, or fails: the peer closed, sent nothing for `t.op`, or someone posted an abort.
    pub fn read_full(
        &mut self,
        buf: &mut [u8],
        t: &Timeouts,
        watch: Watch,
    ) -> Result<(), DistError> {
        let mut got = 0;
        let mut last = Instant::now();
        while got < buf.len() {
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(DistError::peer(
                        self.peer,
                        &self.addr,
                        "closed the connection: the process exited or crashed".into(),
                    ));
                }
                Ok(n) => {
                    got += n;
                    last = Instant::now();
                }
                Err(e) => {
                    if let Some(err) = self.wait_error(e, last, t, watch, "sent") {
                        return Err(err);
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes all of `buf`, or fails as [`Link::read_full`] does.
    pub fn write_full(&mut self, buf: &[u8], t: &Timeouts, watch: Watch) -> Result<(), DistError> {
        let mut sent = 0;
        let mut last = Instant::now();
        while sent < buf.len() {
            match self.stream.write(&buf[sent..]) {
                Ok(0) => {
                    return Err(DistError::peer(
                        self.peer,
                        &self.addr,
                        "accepts no more data".into(),
                    ));
                }
                Ok(n) => {
                    sent += n;
                    last = Instant::now();
                }
                Err(e) => {
                    if let Some(err) = self.wait_error(e, last, t, watch, "took") {
                        return Err(err);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Kinds of messages on the ring; with a sequence number, they detect ranks calling different
/// collectives (which would otherwise exchange garbage or hang).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    AllReduce = 1,
    Broadcast = 2,
    AllGather = 3,
    Barrier = 4,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::AllReduce,
            2 => Op::Broadcast,
            3 => Op::AllGather,
            4 => Op::Barrier,
            _ => return None,
        })
    }
}

const MAGIC: u32 = 0x4E52_5053; // "NRPS"
pub const HEADER: usize = 24;

/// A message header: magic, op, element type, collective sequence number, payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub op: Op,
    pub dtype: u8,
    pub seq: u64,
    pub len: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = self.op as u8;
        b[5] = self.dtype;
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER]) -> Option<Header> {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        (u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) == MAGIC).then_some(())?;
        Some(Header {
            op: Op::from_u8(b[4])?,
            dtype: b[5],
            seq: u64_at(8),
            len: u64_at(16),
        })
    }
}

impl Link {
    /// Sends a header and its payload.
    pub fn send(
        &mut self,
        h: Header,
        payload: &[u8],
        t: &Timeouts,
        watch: Watch,
    ) -> Result<(), DistError> {
        debug_assert_eq!(h.len as usize, payload.len());
        self.write_full(&h.encode(), t, watch)?;
        self.write_full(payload, t, watch)
    }

    /// Receives a header and checks it is the one expected (same op, element type and sequence
    /// number, and the expected length if given); returns the payload length.
    pub fn expect(
        &mut self,
        want: Header,
        exact_len: bool,
        t: &Timeouts,
        watch: Watch,
    ) -> Result<u64, DistError> {
        let mut b = [0u8; HEADER];
        self.read_full(&mut b, t, watch)?;
        let got = Header::decode(&b).ok_or_else(|| {
            DistError::peer(
                self.peer,
                &self.addr,
                "sent a malformed message (not a nerpos peer?)".into(),
            )
        })?;
        if got.op != want.op
            || got.seq != want.seq
            || got.dtype != want.dtype
            || (exact_len && got.len != want.len)
        {
            return Err(DistError::Protocol(format!(
                "rank {} is in collective #{} ({:?}, type {}, {} bytes) while this rank is in #{} ({:?}, \
                 type {}, {} bytes): the ranks called collectives in different orders or with different sizes",
                self.peer,
                got.seq,
                got.op,
                got.dtype,
                got.len,
                want.seq,
                want.op,
                want.dtype,
                want.len
            )));
        }
        Ok(got.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            op: Op::Broadcast,
            dtype: 3,
            seq: 1 << 40,
            len: 12345,
        };
        assert_eq!(Header::decode(&h.encode()), Some(h));
        let mut bad = h.encode();
        bad[0] ^= 1;
        assert_eq!(Header::decode(&bad), None);
    }
}
