//! `nerpos-run`: the run folder — the contract between the trainer, the launcher, `nerpos-predict` and
//! the Slurm scripts — and the small pieces every writer of it shares.
//!
//! - [`RunDir`]: where each file of a run lives, the run's [`Status`] and what a job script should do
//!   next ([`Next`]); scripts ask `nerpos-launch status RUN_DIR` instead of looking at files.
//! - [`Summary`] (`summary.json`), [`MetricsLine`] (`metrics.jsonl`), [`LaunchRecord`]
//!   (`launch.json`): typed, read and written only through these types.
//! - [`atomic`]: files and folders written whole or not at all.
//! - [`config`]: a TOML configuration with `--set key=value` overrides.
//! - [`tensorboard`]: scalar event files for `tensorboard --logdir`.
//! - [`progress`]: the progress line the trainer sends the launcher.
//! - [`EXIT_INTERRUPTED`]: the exit code of a run stopped by a signal after checkpointing;
//!   [`EXIT_DIVERGED`]: of a run stopped at a non-finite loss or gradient.

pub mod atomic;
pub mod cli;
pub mod config;
pub mod layout;
pub mod metrics;
pub mod progress;
pub mod summary;
pub mod tensorboard;

pub use atomic::{publish_dir, staging_dir, write_atomic};
pub use layout::{Next, RunDir, Status};
pub use metrics::MetricsLine;
pub use summary::{Divergence, LaunchRecord, Summary};

use std::path::PathBuf;

/// Exit code of `nerpos-train` (and the launcher) after a signal made every rank checkpoint and stop:
/// "interrupted, resume me". Slurm job scripts requeue on it.
pub const EXIT_INTERRUPTED: u8 = 75;

/// Exit code of `nerpos-train` (every rank) and the launcher when training stopped at a non-finite
/// loss or gradient norm (`nonfinite = "stop"`, or too many skipped steps in a row): the run folder
/// says `diverged` and keeps only finite weights. Not a reason to requeue: the same settings diverge
/// again. (sysexits' EX_DATAERR: far from the 1 and 2 of ordinary failures.)
pub const EXIT_DIVERGED: u8 = 65;

/// Set by the launcher on the ranks it starts: it writes their log files (`logs/rank-N.log`) from
/// their output, so the trainer writes none itself (one copy of every line).
pub const LAUNCHER_LOGS_ENV: &str = "NERPOS_LAUNCHER_LOGS";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// (The I/O error is part of the message, not a separate cause: chained error reports would
    /// print it twice.)
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// A file that exists but does not hold what it should.
    #[error("{}: {msg}", path.display())]
    Malformed { path: PathBuf, msg: String },
    #[error("--set {arg:?}: {msg}")]
    Set { arg: String, msg: String },
}

impl RunError {
    pub(crate) fn io(path: impl Into<PathBuf>, err: std::io::Error) -> RunError {
        RunError::Io {
            path: path.into(),
            err,
        }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, msg: impl ToString) -> RunError {
        RunError::Malformed {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, RunError>;
