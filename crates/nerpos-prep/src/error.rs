//! The library's error type: every variant names the file it is about and, for input errors, the line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PrepError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Malformed corpus input: names the file, the 1-based line and what was expected there.
    #[error("{}:{line}: {msg}", path.display())]
    Input {
        path: PathBuf,
        line: u64,
        msg: String,
    },

    /// Malformed record of a columnar corpus (Parquet, Arrow): names the file and the 0-based record.
    #[error("{}: record {record}: {msg}", path.display())]
    Record {
        path: PathBuf,
        record: u64,
        msg: String,
    },

    /// Input problems that belong to the file as a whole (empty file, no sentences).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },

    #[error("tokenizer {}: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },

    /// Writing the output folder in place (staging, renaming).
    #[error(transparent)]
    Output(#[from] nerpos_run::RunError),

    /// A command-line option or option combination that cannot work.
    #[error("{0}")]
    Options(String),

    #[error("{}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("{}: {source}", path.display())]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow_schema::ArrowError,
    },

    /// A dataset directory that is not what its manifest says it is.
    #[error("dataset {}: {msg}", path.display())]
    Dataset { path: PathBuf, msg: String },
}

pub type Result<T, E = PrepError> = std::result::Result<T, E>;

impl PrepError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PrepError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn input(path: impl Into<PathBuf>, line: u64, msg: impl Into<String>) -> Self {
        PrepError::Input {
            path: path.into(),
            line,
            msg: msg.into(),
        }
    }

    pub(crate) fn dataset(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        PrepError::Dataset {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
