//! The rendezvous store: a key-value server run by rank 0 (as torch's TCPStore), through which ranks
//! exchange their ring addresses and the NCCL unique id, check that they agree on the world, and post
//! the reason for an abort so that every rank reports the root cause.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::DistError;

const SET: u8 = 1;
const GET: u8 = 2;
const FOUND: u8 = 0;
const MISSING: u8 = 1;

type Table = Arc<(Mutex<HashMap<String, Vec<u8>>>, Condvar)>;

/// The server side, run in background threads of rank 0 for the life of the process.
pub struct StoreServer {
    pub port: u16,
}

impl StoreServer {
    /// Listens on all interfaces at `port` (0 picks a free one).
    pub fn start(port: u16) -> Result<StoreServer, DistError> {
        let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
            DistError::Rendezvous(format!(
                "rank 0 cannot listen on port {port} for the rendezvous store: {e} (another job on \
                 this node using MASTER_PORT={port}?)"
            ))
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| DistError::Rendezvous(e.to_string()))?
            .port();
        let table: Table = Arc::new((Mutex::new(HashMap::new()), Condvar::new()));
        std::thread::Builder::new()
            .name("nerpos-store".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let table = table.clone();
                    let _ = std::thread::Builder::new()
                        .name("nerpos-store-conn".into())
                        .spawn(move || serve(conn, table));
                }
            })
            .map_err(|e| DistError::Rendezvous(format!("cannot start the store thread: {e}")))?;
        Ok(StoreServer { port })
    }
}

fn read_u32(s: &mut TcpStream) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_bytes(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let n = read_u32(s)? as usize;
    let mut v = vec![0u8; n];
    s.read_exact(&mut v)?;
    Ok(v)
}

fn serve(mut s: TcpStream, table: Table) {
    let _ = s.set_nodelay(true);
    loop {
        let mut op = [0u8; 1];
        if s.read_exact(&mut op).is_err() {
            return;
        }
        let Ok(key) = read_bytes(&mut s).map(|k| String::from_utf8_lossy(&k).into_owned()) else {
            return;
        };
        let reply = match op[0] {
            SET => {
                let Ok(value) = read_bytes(&mut s) else {
                    return;
                };
                let (lock, cv) = &*table;
                lock.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, value);
                cv.notify_all();
                vec![FOUND, 0, 0, 0, 0]
            }
            GET => {
                let mut w = [0u8; 8];
                if s.read_exact(&mut w).is_err() {
                    return;
                }
                let deadline = Instant::now() + Duration::from_millis(u64::from_le_bytes(w));
                let (lock, cv) = &*table;
                let mut map = lock.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if let Some(v) = map.get(&key) {
                        let mut r = vec![FOUND];
                        r.extend_from_slice(&(v.len() as u32).to_le_bytes());
                        r.extend_from_slice(v);
                        break r;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break vec![MISSING, 0, 0, 0, 0];
                    }
                    map = cv
                        .wait_timeout(map, deadline - now)
                        .map(|(m, _)| m)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            }
            _ => return,
        };
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}

/// A connection to the store.
pub struct StoreClient {
    stream: TcpStream,
    addr: String,
}

impl StoreClient {
    /// Connects to the store at `host:port`, retrying until `timeout` (rank 0 may start later).
    pub fn connect(
        host: &str,
        port: u16,
        timeout: Duration,
        rank: usize,
    ) -> Result<StoreClient, DistError> {
        let addr = format!("{host}:{port}");
        let deadline = Instant::now() + timeout;
        let mut last_err = String::from("no attempt");
        loop {
            match addr.to_socket_addrs() {
                Ok(addrs) => {
                    for a in addrs {
                        match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                            Ok(stream) => {
                                let _ = stream.set_nodelay(true);
                                return Ok(StoreClient { stream, addr });
                            }
                            Err(e) => last_err = e.to_string(),
                        }
                    }
                }
                Err(e) => last_err = format!("cannot resolve {host:?}: {e}"),
            }
            if Instant::now() >= deadline {
                return Err(DistError::Rendezvous(format!(
                    "rank {rank} could not reach the rendezvous store at {addr} within {:.0} s ({last_err}); \
                     rank 0 runs it: is rank 0 running, and are MASTER_ADDR and MASTER_PORT right?",
                    timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn io(&self, e: std::io::Error) -> DistError {
        DistError::peer(0, &self.addr, format!("rendezvous store connection: {e}"))
    }

    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<(), DistError> {
        let mut msg = vec![SET];
        msg.extend_from_slice(&(key.len() as u32).to_le_bytes());
        msg.extend_from_slice(key.as_bytes());
        msg.extend_from_slice(&(value.len() as u32).to_le_bytes());
        msg.extend_from_slice(value);
        self.stream.write_all(&msg).map_err(|e| self.io(e))?;
        let mut r = [0u8; 5];
        self.stream.read_exact(&mut r).map_err(|e| self.io(e))?;
        Ok(())
    }

    /// The value of `key`, waiting up to `wait` for some rank to set it.
    pub fn get(&mut self, key: &str, wait: Duration) -> Result<Option<Vec<u8>>, DistError> {
        let mut msg = vec![GET];
        msg.extend_from_slice(&(key.len() as u32).to_le_bytes());
        msg.extend_from_slice(key.as_bytes());
        msg.extend_from_slice(&(wait.as_millis() as u64).to_le_bytes());
        self.stream.write_all(&msg).map_err(|e| self.io(e))?;
        let mut status = [0u8; 1];
        self.stream
            .read_exact(&mut status)
            .map_err(|e| self.io(e))?;
        let value = read_bytes(&mut self.stream).map_err(|e| self.io(e))?;
        Ok((status[0] == FOUND).then_some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_and_wait() {
        let server = StoreServer::start(0).unwrap();
        let mut a =
            StoreClient::connect("127.0.0.1", server.port, Duration::from_secs(5), 0).unwrap();
        let mut b =
            StoreClient::connect("127.0.0.1", server.port, Duration::from_secs(5), 1).unwrap();
        assert_eq!(a.get("k", Duration::ZERO).unwrap(), None);
        let waiter = std::thread::spawn(move || b.get("k", Duration::from_secs(5)).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        a.set("k", b"value").unwrap();
        assert_eq!(waiter.join().unwrap(), Some(b"value".to_vec()));
    }

    #[test]
    fn unreachable_store_is_a_clear_error_within_the_timeout() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = Instant::now();
        let err = StoreClient::connect("127.0.0.1", port, Duration::from_millis(300), 2)
            .err()
            .unwrap()
            .to_string();
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(
            err.contains("rank 2 could not reach the rendezvous store")
                && err.contains("MASTER_PORT"),
            "{err}"
        );
    }
}
