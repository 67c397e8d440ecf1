//! The model crate's error type: every variant names the folder or file it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint folder or file that is not what it should be.
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// Weights whose names or shapes do not match the model.
    #[error("{}: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },
    /// A model configuration that cannot work (checkpoint settings, head sizes).
    #[error("model configuration: {0}")]
    Config(String),
    /// A fault of the engine itself (a bug, not a user's mistake): what broke, in its words.
    #[error("internal error in the model: {0}")]
    Internal(String),
    /// A fused op's error.
    #[error(transparent)]
    Kernel(#[from] nerpos_kernels::KernelError),
    /// Handing a gradient over to its reduction.
    #[error(transparent)]
    Dist(#[from] nerpos_dist::DistError),
    /// A CUDA driver call that failed (device settings, memory accounting).
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Writing a folder in place (staging, renaming).
    #[error(transparent)]
    Files(#[from] nerpos_run::RunError),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}
