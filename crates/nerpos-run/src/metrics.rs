//! `metrics.jsonl`: one line per log interval, averaged over the interval's steps.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Result, RunError};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    /// Optimiser steps done at the end of the interval.
    pub step: usize,
    /// 1-based epoch of the interval's last step.
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
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
        }
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
