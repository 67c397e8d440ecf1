//! Corpus formats: one file each behind one reader interface ([`Reader`]). Adding a format takes its
//! file here (a type implementing [`Reader`]; a text format parses through [`load_text`]), its variant
//! in [`Format`] with its reader in [`Format::reader`], and its test — `nerpos-prep`, `nerpos-predict`
//! and the manifest ask the reader, not the variant.

pub mod conll;
pub mod gmb;
pub mod hf;
pub mod jsonl;

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::corpus::{Corpus, ReadOptions};
use crate::encoding::{self, Detected};
use crate::error::{PrepError, Result};
use crate::prepare::Input;

/// Input formats.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Kaggle/GMB CSV: `Sentence #,Word,POS,Tag`, the sentence id only on a sentence's first row.
    Gmb,
    /// Whitespace-separated columns, a blank line between sentences, `-DOCSTART-` lines skipped.
    Conll,
    /// One JSON object per line, as Hugging Face `datasets`' `to_json` writes it: a list of tokens,
    /// a list of tags (strings, or integer ids with a names file) and optionally of POS tags.
    Jsonl,
    /// Hugging Face `datasets` as stored: a Parquet export, an Arrow file or a `save_to_disk`
    /// folder, with ClassLabel names from the schema or `dataset_info.json` (the JSON Lines keys).
    Hf,
}

impl Format {
    /// The format's reader: the one place a format is registered.
    pub fn reader(self) -> &'static dyn Reader {
        match self {
            Format::Gmb => &gmb::Gmb,
            Format::Conll => &conll::Conll,
            Format::Jsonl => &jsonl::Jsonl,
            Format::Hf => &hf::Hf,
        }
    }

    pub fn name(self) -> &'static str {
        self.reader().name()
    }

    /// The formats that read `settings`, by name (for messages about their flags).
    pub fn reading(settings: Settings) -> Vec<&'static str> {
        <Format as clap::ValueEnum>::value_variants()
            .iter()
            .filter(|f| f.reader().settings() == settings)
            .map(|f| f.name())
            .collect()
    }
}

/// Which of the read options a format reads: those are recorded in the manifest, and the flags of
/// the others are refused for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settings {
    /// Nothing beyond the encoding (GMB).
    Fixed,
    /// Columns (`--word-col`, `--pos-col`, `--tag-col`).
    Columns,
    /// Keys and names (`--tokens-key`, `--tags-key`, `--pos-key`, `--tag-names`, `--pos-names`).
    Keys,
}

/// One corpus format.
pub trait Reader: Sync {
    /// Its name on the command line, in manifests and messages.
    fn name(&self) -> &'static str;

    /// The read options it takes.
    fn settings(&self) -> Settings;

    /// Checks the read options before anything is read (a combination that cannot work).
    fn check(&self, _opts: &ReadOptions) -> Result<()> {
        Ok(())
    }

    /// The input as given: a format whose folders hold their own splits resolves them.
    fn resolve(&self, input: Input) -> Result<Input> {
        Ok(input)
    }

    /// Reads and validates one input (a file, or a folder where the format has them).
    fn load(&self, path: &Path, opts: &ReadOptions) -> Result<Loaded>;
}

/// A read input: its corpus, and the size and SHA-256 of the data files read (in order).
pub struct Loaded {
    pub corpus: Corpus,
    pub bytes: u64,
    pub sha256: String,
}

/// Reads a text file: hashed and, decoded (the encoding detected or as given), parsed by `parse`,
/// both at once.
pub fn load_text(
    path: &Path,
    opts: &ReadOptions,
    parse: impl Fn(&str, Detected) -> Result<Corpus> + Sync,
) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| PrepError::io(path, e))?;
    let (sha256, corpus) = rayon::join(
        || format!("{:x}", Sha256::digest(&bytes)),
        || decode_and_parse(path, &bytes, opts, &parse),
    );
    Ok(Loaded {
        corpus: corpus?,
        bytes: bytes.len() as u64,
        sha256,
    })
}

fn decode_and_parse(
    path: &Path,
    bytes: &[u8],
    opts: &ReadOptions,
    parse: &(impl Fn(&str, Detected) -> Result<Corpus> + Sync),
) -> Result<Corpus> {
    if bytes.is_empty() {
        return Err(PrepError::File {
            path: path.to_owned(),
            msg: "the file is empty (expected a corpus)".into(),
        });
    }
    let (text, detected) = encoding::decode(path, bytes, opts.encoding)?;
    parse(&text, detected)
}
