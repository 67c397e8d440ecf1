//! TensorBoard scalar event files, so that `tensorboard --logdir runs` shows every run and grid point
//! while they train.
//!
//! An event file is a TFRecord stream (per record: length, its masked CRC-32C, the bytes, their masked
//! CRC-32C) of `Event` protocol buffers: first one carrying the file version, then one per logged step
//! with a `Summary` of `(tag, simple_value)` pairs. Only the few protobuf fields written here are
//! encoded, by hand: a protobuf library would be the largest dependency of this crate.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Result, RunError};

/// CRC-32C (Castagnoli), bit by bit over a 256-entry table.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// TFRecord's masked CRC (a CRC of data that itself contains CRCs is weak; the mask fixes that).
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xA282_EAD8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `Event { wall_time = 1 (double); step = 2 (int64); file_version = 3 | summary = 5 }`.
fn event(step: Option<u64>, file_version: Option<&str>, summary: Option<&[u8]>) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(1 << 3 | 1);
    e.extend_from_slice(&wall_time().to_le_bytes());
    if let Some(s) = step {
        e.push(2 << 3);
        varint(&mut e, s);
    }
    if let Some(v) = file_version {
        bytes_field(&mut e, 3, v.as_bytes());
    }
    if let Some(s) = summary {
        bytes_field(&mut e, 5, s);
    }
    e
}

/// `Summary { repeated Value value = 1 }`, `Value { tag = 1 (string); simple_value = 2 (float) }`.
fn summary(scalars: &[(&str, f64)]) -> Vec<u8> {
    let mut s = Vec::new();
    for (tag, value) in scalars {
        let mut v = Vec::new();
        bytes_field(&mut v, 1, tag.as_bytes());
        v.push(2 << 3 | 5);
        v.extend_from_slice(&(*value as f32).to_le_bytes());
        bytes_field(&mut s, 1, &v);
    }
    s
}

/// Appends scalar events to one event file in a folder.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// A new event file in `dir` (created if missing). Each process session writes its own file;
    /// TensorBoard reads them all, so a resumed run continues its curves.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).map_err(|e| RunError::io(dir, e))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        let secs = wall_time() as u64;
        let path = dir.join(format!(
            "events.out.tfevents.{secs}.{host}.{}",
            std::process::id()
        ));
        let file = File::create(&path).map_err(|e| RunError::io(&path, e))?;
        let mut w = EventWriter {
            path,
            out: BufWriter::new(file),
        };
        w.record(&event(None, Some("brain.Event:2"), None))?;
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.out
            .write_all(&rec)
            .map_err(|e| RunError::io(&self.path, e))
    }

    /// Writes `scalars` (tag, value) at `step` and flushes, so that a running TensorBoard sees them.
    pub fn scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<()> {
        if scalars.is_empty() {
            return Ok(());
        }
        self.record(&event(Some(step), None, Some(&summary(scalars))))?;
        self.flush()
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| RunError::io(&self.path, e))
    }
}

/// Reads back the scalars of an event file as (step, tag, value), checking every record's CRCs: this
/// crate's own check of what it writes (the tests also read the files with TensorBoard's reader).
pub fn read_scalars(path: &Path) -> Result<Vec<(u64, String, f32)>> {
    let data = std::fs::read(path).map_err(|e| RunError::io(path, e))?;
    let bad = |msg: &str| RunError::malformed(path, msg);
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let header = data
            .get(at..at + 12)
            .ok_or_else(|| bad("truncated record"))?;
        let len = u64::from_le_bytes(header[..8].try_into().expect("8 bytes")) as usize;
        if masked_crc(&header[..8]).to_le_bytes() != header[8..12] {
            return Err(bad("record length CRC mismatch"));
        }
        let body = data
            .get(at + 12..at + 12 + len + 4)
            .ok_or_else(|| bad("truncated record"))?;
        let (payload, crc) = body.split_at(len);
        if masked_crc(payload).to_le_bytes() != crc {
            return Err(bad("record data CRC mismatch"));
        }
        decode_event(payload, &mut out).ok_or_else(|| bad("malformed event"))?;
        at += 12 + len + 4;
    }
    Ok(out)
}

struct Fields<'a> {
    data: &'a [u8],
}

enum Field<'a> {
    Varint(u64),
    Fixed64,
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.data.split_first()?;
            self.data = rest;
            v |= u64::from(b & 0x7F) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (a, b) = self.data.split_at(n);
        self.data = b;
        Some(a)
    }

    /// The next (field number, value), `Some(None)` at the end, `None` if malformed.
    fn next_field(&mut self) -> Option<Option<(u64, Field<'a>)>> {
        if self.data.is_empty() {
            return Some(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = self.varint()? as usize;
                Field::Bytes(self.take(n)?)
            }
            5 => Field::Fixed32(self.take(4)?.try_into().ok()?),
            _ => return None,
        };
        Some(Some((key >> 3, value)))
    }
}

fn decode_event(data: &[u8], out: &mut Vec<(u64, String, f32)>) -> Option<()> {
    let mut f = Fields { data };
    let (mut step, mut values) = (0u64, Vec::new());
    while let Some((n, v)) = f.next_field()? {
        match (n, v) {
            (2, Field::Varint(s)) => step = s,
            (5, Field::Bytes(summary)) => {
                let mut s = Fields { data: summary };
                while let Some((1, Field::Bytes(value))) = s.next_field()? {
                    let mut v = Fields { data: value };
                    let (mut tag, mut x) = (String::new(), f32::NAN);
                    while let Some((k, field)) = v.next_field()? {
                        match (k, field) {
                            (1, Field::Bytes(t)) => tag = String::from_utf8(t.to_vec()).ok()?,
                            (2, Field::Fixed32(b)) => x = f32::from_le_bytes(b),
                            _ => {}
                        }
                    }
                    values.push((tag, x));
                }
            }
            _ => {}
        }
    }
    out.extend(values.into_iter().map(|(t, x)| (step, t, x)));
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn scalars_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(&dir.path().join("tb")).unwrap();
        w.scalars(10, &[("train/loss", 0.5), ("train/lr", 1e-4)])
            .unwrap();
        w.scalars(20, &[("dev/f1_micro", 0.75)]).unwrap();
        let back = read_scalars(w.path()).unwrap();
        assert_eq!(
            back,
            vec![
                (10, "train/loss".to_string(), 0.5),
                (10, "train/lr".to_string(), 1e-4f64 as f32),
                (20, "dev/f1_micro".to_string(), 0.75),
            ]
        );
    }
}
