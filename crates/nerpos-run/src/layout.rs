//! Where everything of a run lives, and what state the run is in.
//!
//! ```text
//! RUN_DIR/
//!   config.toml           the resolved configuration (what --resume reads)
//!   status.json           running | interrupted | failed | diverged (with a message); written as the
//!                         run goes
//!   summary.json          written last: the run finished (or stopped at a non-finite step: diverged)
//!   metrics.jsonl         one line per log interval
//!   eval/                 step-XXXXXXXX-dev.{json,txt}, test.{json,txt}
//!   best/ last/           Hugging Face-loadable model folders
//!   checkpoints/          step-XXXXXXXX/ (resumable: state.json + tensors)
//!   curves.svg            loss, learning rate and dev F1
//!   tb/                   TensorBoard event files
//!   logs/rank-N.log       each rank's log
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::summary::{LaunchRecord, Summary};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing has run yet.
    Pending,
    /// Started and not ended (or ended without a word: killed).
    Running,
    /// Stopped by a signal after writing a checkpoint: resume it.
    Interrupted,
    Finished,
    Failed,
    /// Stopped at a non-finite loss or gradient (`nonfinite` policy); its weights on disk are the
    /// last finite ones. Not resumed by itself: the same data and settings diverge again.
    Diverged,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Interrupted => "interrupted",
            Status::Finished => "finished",
            Status::Failed => "failed",
            Status::Diverged => "diverged",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a job script (or the launcher) should do with a run folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// It finished: nothing.
    Done,
    /// It has a checkpoint: `nerpos-train --resume RUN_DIR`.
    Resume,
    /// `nerpos-train --config ...`.
    Start,
}

impl Next {
    pub fn as_str(self) -> &'static str {
        match self {
            Next::Done => "done",
            Next::Resume => "resume",
            Next::Start => "start",
        }
    }
}

/// Name of a resumable checkpoint folder under `checkpoints/`, and the file that marks it complete.
const CHECKPOINT_PREFIX: &str = "step-";
const CHECKPOINT_STATE: &str = "state.json";

/// A run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub fn status_file(&self) -> PathBuf {
        self.root.join("status.json")
    }

    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn eval_dir(&self) -> PathBuf {
        self.root.join("eval")
    }

    /// The report files of a dev evaluation at `step` (`.json` and `.txt`).
    pub fn dev_eval(&self, step: usize) -> (PathBuf, PathBuf) {
        self.eval_pair(&format!("step-{step:08}-dev"))
    }

    /// The report files of the final test evaluation.
    pub fn test_eval(&self) -> (PathBuf, PathBuf) {
        self.eval_pair("test")
    }

    /// The final test evaluation beside published scores (Markdown), when a run has them.
    pub fn test_vs_reference(&self) -> PathBuf {
        self.eval_dir().join("test-vs-reference.md")
    }

    fn eval_pair(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.eval_dir();
        (
            dir.join(format!("{name}.json")),
            dir.join(format!("{name}.txt")),
        )
    }

    /// Dev evaluation reports present, by step, in step order.
    pub fn dev_evals(&self) -> Vec<(usize, PathBuf)> {
        let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(self.eval_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("step-")?.strip_suffix("-dev.json")?;
                Some((step.parse().ok()?, e.path()))
            })
            .collect();
        out.sort();
        out
    }

    pub fn best(&self) -> PathBuf {
        self.root.join("best")
    }

    pub fn last(&self) -> PathBuf {
        self.root.join("last")
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// The folder of the checkpoint after `step` optimiser steps.
    pub fn checkpoint(&self, step: usize) -> PathBuf {
        self.checkpoints_dir()
            .join(format!("{CHECKPOINT_PREFIX}{step:08}"))
    }

    /// The file inside a checkpoint folder whose presence makes it complete.
    pub fn checkpoint_state(checkpoint: &Path) -> PathBuf {
        checkpoint.join(CHECKPOINT_STATE)
    }

    /// Complete checkpoints, oldest first.
    pub fn checkpoints(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(self.checkpoints_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(CHECKPOINT_PREFIX))
                    && Self::checkpoint_state(p).is_file()
            })
            .collect();
        out.sort();
        out
    }

    pub fn curves(&self) -> PathBuf {
        self.root.join("curves.svg")
    }

    pub fn tensorboard(&self) -> PathBuf {
        self.root.join("tb")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn rank_log(&self, rank: usize) -> PathBuf {
        self.logs().join(format!("rank-{rank}.log"))
    }

    /// The run's summary, if it finished (an unreadable summary is an error, not "unfinished").
    pub fn read_summary(&self) -> crate::Result<Option<Summary>> {
        Summary::read(&self.summary())
    }

    /// The last status a process recorded, if any.
    pub fn read_record(&self) -> crate::Result<Option<LaunchRecord>> {
        LaunchRecord::read(&self.status_file())
    }

    /// Records `status` (with a message) in `status.json`.
    pub fn record(&self, status: Status, message: impl Into<String>) -> crate::Result<()> {
        LaunchRecord {
            status,
            message: message.into(),
        }
        .write(&self.status_file())
    }

    /// Where the run stands: its summary's status (finished or diverged) when it has one; else what a
    /// process last recorded; else interrupted when it holds a checkpoint, running when it has
    /// started, pending otherwise.
    pub fn status(&self) -> crate::Result<Status> {
        if let Some(s) = self.read_summary()? {
            return Ok(s.status);
        }
        if let Some(r) = self.read_record()? {
            return Ok(r.status);
        }
        Ok(if !self.checkpoints().is_empty() {
            Status::Interrupted
        } else if self.config().is_file() {
            Status::Running
        } else {
            Status::Pending
        })
    }

    /// What to do with the run: nothing once finished or diverged (resuming a diverged run with the
    /// same settings diverges again: that is the user's call, with other settings), resume from its
    /// newest checkpoint if it has one (interrupted or failed after a checkpoint), else start.
    pub fn next(&self) -> crate::Result<Next> {
        Ok(
            if matches!(self.status()?, Status::Finished | Status::Diverged) {
                Next::Done
            } else if !self.checkpoints().is_empty() && self.config().is_file() {
                Next::Resume
            } else {
                Next::Start
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("r"));
        assert_eq!(run.status().unwrap(), Status::Pending);
        assert_eq!(run.next().unwrap(), Next::Start);
        std::fs::create_dir_all(run.path()).unwrap();
        std::fs::write(run.config(), "").unwrap();
        assert_eq!(run.status().unwrap(), Status::Running);
        // An incomplete checkpoint (no state.json) does not count.
        std::fs::create_dir_all(run.checkpoint(10)).unwrap();
        assert_eq!(run.next().unwrap(), Next::Start);
        std::fs::write(RunDir::checkpoint_state(&run.checkpoint(10)), "{}").unwrap();
        assert_eq!(run.status().unwrap(), Status::Interrupted);
        assert_eq!(run.next().unwrap(), Next::Resume);
        assert_eq!(run.checkpoints(), vec![run.checkpoint(10)]);
        run.record(Status::Failed, "out of memory").unwrap();
        assert_eq!(run.status().unwrap(), Status::Failed);
        assert_eq!(run.next().unwrap(), Next::Resume);
        Summary {
            status: Status::Finished,
            steps: 10,
            epochs: 1,
            world_size: 1,
            best_dev_f1: Some(0.5),
            best_step: Some(10),
            test_f1: None,
            wall_s: 1.0,
            weights_sha256: "x".into(),
            diverged: None,
        }
        .write(&run.summary())
        .unwrap();
        assert_eq!(run.status().unwrap(), Status::Finished);
        assert_eq!(run.next().unwrap(), Next::Done);
    }

    /// A diverged run's summary says so, and a job script does not resume it by itself.
    #[test]
    fn a_diverged_run_is_done_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        std::fs::write(run.config(), "").unwrap();
        std::fs::create_dir_all(run.checkpoint(6)).unwrap();
        std::fs::write(RunDir::checkpoint_state(&run.checkpoint(6)), "{}").unwrap();
        let s = Summary {
            status: Status::Diverged,
            steps: 9,
            epochs: 1,
            world_size: 2,
            best_dev_f1: Some(0.4),
            best_step: Some(6),
            test_f1: None,
            wall_s: 3.0,
            weights_sha256: "x".into(),
            diverged: Some(crate::Divergence {
                step: 9,
                loss: f64::NAN,
                grad_norm: f64::INFINITY,
                skipped_in_a_row: 1,
                checkpoint: Some(run.checkpoint(6)),
            }),
        };
        s.write(&run.summary()).unwrap();
        assert_eq!(run.status().unwrap(), Status::Diverged);
        assert_eq!(run.next().unwrap(), Next::Done);
        let text = std::fs::read_to_string(run.summary()).unwrap();
        assert!(text.contains("\"status\": \"diverged\""), "{text}");
        let back = run.read_summary().unwrap().unwrap();
        let d = back.diverged.unwrap();
        assert!(
            d.loss.is_nan() && d.grad_norm.is_nan(),
            "null reads back as NaN"
        );
        assert_eq!((d.step, d.checkpoint), (9, Some(run.checkpoint(6))));
    }

    #[test]
    fn dev_evals_in_step_order() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        std::fs::create_dir_all(run.eval_dir()).unwrap();
        for s in [20, 3, 100] {
            std::fs::write(run.dev_eval(s).0, "{}").unwrap();
        }
        std::fs::write(run.test_eval().0, "{}").unwrap();
        let steps: Vec<usize> = run.dev_evals().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![3, 20, 100]);
    }
}
