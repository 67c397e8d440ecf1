//! `nerpos-train`: the data-parallel trainer of the BERT+POS tagger.
//!
//! One process per device. The sequence of optimiser batches depends only on the seed (not on the
//! number of processes); gradients are summed across processes in buckets and the loss is normalised by
//! the global count of labelled sub-words, so W processes with batch b train the model one process
//! with batch W·b trains. Runs write `config.toml`, `metrics.jsonl`, `eval/`, `best/`, `last/`,
//! resumable `checkpoints/`, `summary.json` and `curves.svg` into their folder.

mod checkpoint;
pub mod config;
pub mod data;
pub mod evaluate;
pub mod health;
pub mod optim;
mod output;
mod report;
mod run;
mod setup;
mod trainer;

pub use config::TrainConfig;
pub use output::Output;
pub use run::{Outcome, run};
pub use setup::device;
pub use trainer::{Means, StepSettings, StepStats, Trainer};
