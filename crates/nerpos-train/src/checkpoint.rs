//! Resumable checkpoints: weights, optimiser moments and the loop's position, written into a temporary
//! folder and renamed into place, the oldest deleted beyond a count.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

pub const CHECKPOINTS: &str = "checkpoints";
const STATE: &str = "state.json";
const WEIGHTS: &str = "weights.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";

/// Where the loop stands; the random streams are derived from (seed, epoch, step, rank), so they need
/// no saving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimiser steps done.
    pub step: usize,
    /// Epoch and step within it of the next step.
    pub epoch: usize,
    pub index_in_epoch: usize,
    pub adam_steps: u64,
    pub best_dev_f1: Option<f64>,
    pub best_step: Option<usize>,
    pub evals_since_best: usize,
    pub world_size: usize,
    /// The labels and POS tags the run trains with (a resume with other vocabularies is refused).
    pub labels: Vec<String>,
    pub pos: Vec<String>,
}

/// A checkpoint folder's path for `step`.
pub fn folder(run: &Path, step: usize) -> PathBuf {
    run.join(CHECKPOINTS).join(format!("step-{step:08}"))
}

fn save_tensors(path: &Path, tensors: BTreeMap<String, Tensor>) -> anyhow::Result<()> {
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, path)
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes a checkpoint for `state` and keeps the newest `keep`.
pub fn save(
    run: &Path,
    state: &LoopState,
    weights: BTreeMap<String, Tensor>,
    optimizer: BTreeMap<String, Tensor>,
    keep: usize,
) -> anyhow::Result<PathBuf> {
    let root = run.join(CHECKPOINTS);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempdir_in(&root)?;
    save_tensors(&tmp.path().join(WEIGHTS), weights)?;
    save_tensors(&tmp.path().join(OPTIMIZER), optimizer)?;
    std::fs::write(
        tmp.path().join(STATE),
        serde_json::to_string_pretty(state)? + "\n",
    )?;
    let dest = folder(run, state.step);
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::rename(tmp.keep(), &dest).with_context(|| format!("writing {}", dest.display()))?;
    let mut all = list(run)?;
    while all.len() > keep {
        let old = all.remove(0);
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(dest)
}

/// Complete checkpoints of a run, oldest first.
pub fn list(run: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let root = run.join(CHECKPOINTS);
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
                && p.join(STATE).is_file()
        })
        .collect();
    out.sort();
    Ok(out)
}

/// A checkpoint read back.
pub struct Loaded {
    pub dir: PathBuf,
    pub state: LoopState,
    pub weights: HashMap<String, Tensor>,
    pub optimizer: PathBuf,
}

/// The newest checkpoint of `run`.
pub fn load_latest(run: &Path) -> anyhow::Result<Loaded> {
    let Some(dir) = list(run)?.pop() else {
        bail!(
            "{}: no checkpoint to resume from (expected {CHECKPOINTS}/step-*/)",
            run.display()
        );
    };
    let text = std::fs::read_to_string(dir.join(STATE))
        .with_context(|| format!("reading {}", dir.join(STATE).display()))?;
    let state: LoopState = serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed", dir.join(STATE).display()))?;
    let weights = candle_core::safetensors::load(dir.join(WEIGHTS), &candle_core::Device::Cpu)
        .with_context(|| format!("reading {}", dir.join(WEIGHTS).display()))?;
    Ok(Loaded {
        optimizer: dir.join(OPTIMIZER),
        dir,
        state,
        weights,
    })
}
