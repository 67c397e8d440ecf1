//! Resumable checkpoints: weights, optimiser moments and the loop's position, written into a temporary
//! folder and renamed into place, the oldest deleted beyond a count.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::Tensor;
use nerpos_run::RunDir;
use serde::{Deserialize, Serialize};

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
    /// The run's global batch (rows, real tokens; 0 = no token budget): what it keeps when resumed
    /// on another number of processes. Derived from the configuration at the start and recorded here,
    /// not written into the user's configuration. Absent in checkpoints of earlier versions, whose
    /// config.toml holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<(usize, usize)>,
    /// The labels and POS tags the run trains with (a resume with other vocabularies is refused).
    pub labels: Vec<String>,
    pub pos: Vec<String>,
}

fn save_tensors(path: &Path, tensors: BTreeMap<String, Tensor>) -> anyhow::Result<()> {
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, path)
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes a checkpoint for `state` and keeps the newest `keep`.
pub fn save(
    run: &RunDir,
    state: &LoopState,
    weights: BTreeMap<String, Tensor>,
    optimizer: BTreeMap<String, Tensor>,
    keep: usize,
) -> anyhow::Result<PathBuf> {
    let dest = run.checkpoint(state.step);
    // A resumable checkpoint must resume: never one with a NaN weight or moment.
    let all = weights
        .iter()
        .chain(&optimizer)
        .map(|(k, t)| (k.as_str(), t));
    if let Some((name, bad)) = nerpos_kernels::host::first_non_finite(all)? {
        bail!(
            "{}: not written: {bad} value(s) of {name} are not finite (NaN or infinite)",
            dest.display()
        );
    }
    let tmp = nerpos_run::staging_dir(&dest)?;
    save_tensors(&tmp.path().join(WEIGHTS), weights)?;
    save_tensors(&tmp.path().join(OPTIMIZER), optimizer)?;
    // The state file goes last: its presence marks a checkpoint complete.
    nerpos_run::write_atomic(
        &RunDir::checkpoint_state(tmp.path()),
        (serde_json::to_string_pretty(state)? + "\n").as_bytes(),
    )?;
    nerpos_run::publish_dir(tmp, &dest)?;
    let mut all = run.checkpoints();
    while all.len() > keep {
        let old = all.remove(0);
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(dest)
}

/// A checkpoint read back.
pub struct Loaded {
    pub dir: PathBuf,
    pub state: LoopState,
    pub weights: HashMap<String, Tensor>,
    pub optimizer: PathBuf,
}

/// The newest checkpoint of `run`.
pub fn load_latest(run: &RunDir) -> anyhow::Result<Loaded> {
    let Some(dir) = run.checkpoints().pop() else {
        bail!(
            "{}: no checkpoint to resume from (expected {}/step-*/)",
            run.path().display(),
            run.checkpoints_dir().display()
        );
    };
    let state_file = RunDir::checkpoint_state(&dir);
    let text = std::fs::read_to_string(&state_file)
        .with_context(|| format!("reading {}", state_file.display()))?;
    let state: LoopState = serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed", state_file.display()))?;
    let weights = candle_core::safetensors::load(dir.join(WEIGHTS), &candle_core::Device::Cpu)
        .with_context(|| format!("reading {}", dir.join(WEIGHTS).display()))?;
    Ok(Loaded {
        optimizer: dir.join(OPTIMIZER),
        dir,
        state,
        weights,
    })
}
