//! `nerpos-prep`: token-level NER corpora to sharded Parquet datasets of aligned sub-word ids.
//!
//! The library is what later stages read datasets with ([`Dataset`]); the `nerpos-prep` binary writes
//! them ([`prepare()`]). Stages: [`corpus`] reads and validates, [`tags`] converts and drops tag types,
//! [`split`] and [`vocab`] fix the splits and ids, [`tokenize`] turns words into sub-words, [`align`]
//! windows and labels them, [`shards`] and [`manifest`] define what is written.

pub mod align;
pub mod args;
pub mod corpus;
pub mod dataset;
pub mod encoding;
pub mod error;
pub mod formats;
pub mod inspect;
pub mod manifest;
pub mod prepare;
pub mod shards;
pub mod split;
pub mod tags;
pub mod tokenize;
pub mod vocab;
pub mod words;

pub use dataset::{Columns, Dataset, Part, RowReader};
pub use error::{PrepError, Result};
pub use manifest::{LabelSubwords, Manifest, Split};
pub use prepare::{Input, PrepareOptions, prepare};
pub use shards::Row;
pub use tokenize::{SubwordTokenizer, fingerprint};
