//! `summary.json` (what a finished run reports) and `status.json` (what a process last recorded).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::layout::Status;
use crate::{Result, RunError};

/// `summary.json`: written by rank 0 when the run has finished; read by the launcher (sweep tables)
/// and `nerpos-launch status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub status: Status,
    /// Optimiser steps done.
    pub steps: usize,
    pub epochs: usize,
    pub world_size: usize,
    pub best_dev_f1: Option<f64>,
    pub best_step: Option<usize>,
    /// Test micro F1 of the best dev model.
    pub test_f1: Option<f64>,
    pub wall_s: f64,
    /// SHA-256 of the final weights (every rank agreed on it).
    pub weights_sha256: String,
    /// Why the run stopped early, when its status is `diverged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<Divergence>,
}

/// The step a diverged run stopped at (`summary.json`'s `diverged`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Divergence {
    /// The optimiser step (1-based) whose loss or gradient norm was not finite; its update was not
    /// applied.
    pub step: usize,
    /// Its mean loss and global gradient norm (`null` in the file when not finite: JSON has no NaN).
    #[serde(deserialize_with = "crate::metrics::nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "crate::metrics::nan_if_null")]
    pub grad_norm: f64,
    /// Non-finite steps in a row up to it (1 under `nonfinite = "stop"`).
    pub skipped_in_a_row: usize,
    /// The newest checkpoint, every value finite, that `--resume` continues from (none if the run
    /// wrote none before it diverged).
    pub checkpoint: Option<PathBuf>,
}

/// `status.json`: the last status a process recorded, with a message (why it failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchRecord {
    pub status: Status,
    pub message: String,
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RunError::io(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| RunError::malformed(path, e))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("plain data serialises") + "\n";
    crate::write_atomic(path, text.as_bytes())
}

impl Summary {
    /// The summary at `path`, `None` if there is none.
    pub fn read(path: &Path) -> Result<Option<Summary>> {
        read_json(path)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }
}

impl LaunchRecord {
    pub fn read(path: &Path) -> Result<Option<LaunchRecord>> {
        read_json(path)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_round_trips_and_refuses_other_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("summary.json");
        assert_eq!(Summary::read(&p).unwrap(), None);
        let s = Summary {
            status: Status::Finished,
            steps: 63,
            epochs: 1,
            world_size: 2,
            best_dev_f1: Some(0.56),
            best_step: Some(63),
            test_f1: Some(0.55),
            wall_s: 90.5,
            weights_sha256: "ab".into(),
            diverged: None,
        };
        s.write(&p).unwrap();
        assert_eq!(Summary::read(&p).unwrap(), Some(s));
        std::fs::write(&p, r#"{"status": "finished", "stepz": 1}"#).unwrap();
        let e = Summary::read(&p).unwrap_err().to_string();
        assert!(e.contains("summary.json"), "{e}");
    }
}
