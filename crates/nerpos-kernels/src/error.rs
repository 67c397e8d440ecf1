//! The kernels' errors: candle's, a launch the GPU cannot run, and faults of the engine itself.

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A launch beyond the hardware's limits, or arguments that do not fit the kernel.
    #[error("kernel {kernel}: {msg}")]
    Launch { kernel: String, msg: String },
    /// A setting the user gave that cannot be used (an environment variable's value).
    #[error("{0}")]
    Input(String),
    /// A fault of the engine (an op given a tensor it cannot take): a bug, not a user's mistake.
    #[error("internal error in the fused ops: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, KernelError>;

impl From<KernelError> for candle_core::Error {
    fn from(e: KernelError) -> candle_core::Error {
        match e {
            KernelError::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}
