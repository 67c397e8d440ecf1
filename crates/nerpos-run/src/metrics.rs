//! `metrics.jsonl`: one line per log interval, averaged over the interval's steps.
//!
//! A diverging run logs non-finite numbers: JSON has no NaN or infinity, so they are written as
//! `null` (serde_json's way) and read back as NaN ([`nan_if_null`]).

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Result, RunError};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    /// Optimiser steps done at the end of the interval.
    pub step: usize,
    /// 1-based epoch of the interval's last step.
    pub epoch: usize,
    /// Mean loss of the interval's applied steps; of all its steps when none was applied (`null` in
    /// the file when not finite).
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    pub lr: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    /// Steps of the interval whose update was skipped: a non-finite loss or gradient norm under
    /// `nonfinite = "skip"` (absent in files of earlier versions: 0).
    #[serde(default)]
    pub skipped_steps: usize,
    /// Real (non-padding) sub-word tokens per second, all ranks together.
    pub tokens_per_s: f64,
    pub sentences_per_s: f64,
    pub step_s: f64,
    /// Seconds per step waited for gradient reductions after backward (the exposed all-reduce).
    pub allreduce_s: f64,
    /// Seconds per step spent reducing gradients, overlapped with backward or not.
    #[serde(default)]
    pub allreduce_total_s: f64,
    /// Seconds per step the step waited for its batch.
    pub data_wait_s: f64,
}

impl MetricsLine {
    /// Every line of a metrics file (none if it does not exist).
    pub fn read_all(path: &Path) -> Result<Vec<MetricsLine>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RunError::io(path, e)),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| RunError::malformed(path, format!("line {}: {e}", i + 1)))
            })
            .collect()
    }

    /// Keeps the lines of steps up to `step` (after a resume, later steps are redone).
    pub fn truncate_after(path: &Path, step: usize) -> Result<()> {
        let kept: String = Self::read_all(path)?
            .into_iter()
            .filter(|l| l.step <= step)
            .map(|l| l.to_json() + "\n")
            .collect();
        crate::write_atomic(path, kept.as_bytes())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serialises")
    }
}

/// A number that may be `null` in a file, read as NaN (how a non-finite value is written).
pub fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: usize) -> MetricsLine {
        MetricsLine {
            step,
            epoch: 1,
            loss: 0.5,
            lr: 1e-4,
            grad_norm: 1.0,
            tokens_per_s: 100.0,
            sentences_per_s: 3.0,
            step_s: 1.0,
            allreduce_s: 0.0,
            allreduce_total_s: 0.0,
            data_wait_s: 0.0,
            skipped_steps: 0,
        }
    }

    /// A diverged interval's NaN and infinity are written as `null` and read back as NaN, by
    /// `read_all` and by a resume's truncation alike.
    #[test]
    fn non_finite_numbers_round_trip_as_null() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let bad = MetricsLine {
            loss: f64::NAN,
            grad_norm: f64::INFINITY,
            skipped_steps: 2,
            ..line(20)
        };
        let text = [line(10).to_json(), bad.to_json()].join("\n") + "\n";
        assert!(
            text.contains("\"loss\":null") && text.contains("\"grad_norm\":null"),
            "{text}"
        );
        std::fs::write(&p, text).unwrap();
        let back = MetricsLine::read_all(&p).unwrap();
        assert_eq!(back[0], line(10));
        assert!(back[1].loss.is_nan() && back[1].grad_norm.is_nan());
        assert_eq!(back[1].skipped_steps, 2);
        MetricsLine::truncate_after(&p, 20).unwrap();
        assert_eq!(MetricsLine::read_all(&p).unwrap().len(), 2);
        // A line of an earlier version (no skipped_steps) still reads.
        let old = line(10).to_json().replace(",\"skipped_steps\":0", "");
        std::fs::write(&p, old + "\n").unwrap();
        assert_eq!(MetricsLine::read_all(&p).unwrap(), vec![line(10)]);
    }

    #[test]
    fn truncate_keeps_earlier_steps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let text: String = [10, 20, 30].map(|s| line(s).to_json() + "\n").concat();
        std::fs::write(&p, text).unwrap();
        MetricsLine::truncate_after(&p, 20).unwrap();
        let steps: Vec<usize> = MetricsLine::read_all(&p)
            .unwrap()
            .iter()
            .map(|l| l.step)
            .collect();
        assert_eq!(steps, vec![10, 20]);
        std::fs::write(&p, "{\"step\": 1}\n").unwrap();
        let e = MetricsLine::read_all(&p).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
