//! `manifest.json`: the one definition of a dataset directory's metadata, written by `nerpos-prep` and
//! read by every later stage.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::corpus::Format;
use crate::error::{PrepError, Result};

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: &str = "nerpos-dataset";
pub const FORMAT_VERSION: u32 = 1;

/// Label id of positions that carry no label (specials, padding, non-first sub-words), as in PyTorch's
/// `CrossEntropyLoss(ignore_index=-100)`.
pub const IGNORE_LABEL: i32 = -100;
pub const POS_PAD: &str = "<pad>";
pub const POS_UNK: &str = "<unk>";
pub const POS_PAD_ID: u32 = 0;
pub const POS_UNK_ID: u32 = 1;

/// The three splits, in the order they are listed and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Dev, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub created_by: String,
    /// The corpus file (the training file of a pre-split corpus).
    pub source: Source,
    /// Every file read, with the split it went to (none: one file, split by `options.split`).
    #[serde(default)]
    pub files: Vec<SourceFile>,
    /// Whether the corpus has POS tags (without, every token's POS id is `pos_unk_id` and a model is
    /// trained without the POS embedding).
    #[serde(default = "yes")]
    pub has_pos: bool,
    pub tokenizer: TokenizerInfo,
    pub options: Options,
    /// NER labels in id order.
    pub labels: Vec<String>,
    pub label_ignore_id: i32,
    /// POS tags in id order; `pos[pos_pad_id]` and `pos[pos_unk_id]` are reserved.
    pub pos: Vec<String>,
    pub pos_pad_id: u32,
    pub pos_unk_id: u32,
    pub corpus: CorpusStats,
    pub splits: Splits,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub path: String,
    pub format: Format,
    pub encoding: String,
    pub bytes: u64,
    pub sha256: String,
}

/// One file of the corpus and the split its sentences went to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFile {
    pub split: Option<Split>,
    #[serde(flatten)]
    pub source: Source,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub path: String,
    pub files: Vec<String>,
    /// Compare with [`crate::tokenize::fingerprint`] of a checkpoint folder before training on it.
    pub fingerprint: String,
    pub pad_token_id: u32,
    pub unk_token_id: u32,
    /// Special token ids before / after each window ([CLS] / [SEP] for BERT).
    pub prefix_ids: Vec<u32>,
    pub suffix_ids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Options {
    /// Longest row in sub-words, special tokens included.
    pub max_len: usize,
    /// Words repeated between consecutive windows of a long sentence.
    pub window_overlap: usize,
    /// `first`: label on each word's first sub-word; `all`: on every sub-word (I- on continuations).
    pub label_subwords: LabelSubwords,
    /// The input's tag scheme (converted to IOB2).
    #[serde(default)]
    pub scheme: crate::tags::Scheme,
    pub drop_types: Vec<String>,
    /// POS tags crossed with their word's shape (`--pos-shape`).
    #[serde(default)]
    pub pos_shape: bool,
    /// Train/dev/test fractions of a corpus split at random; none for a pre-split corpus.
    pub split: Option<[f64; 3]>,
    pub seed: u64,
    pub shard_rows: usize,
    /// CoNLL columns of the word, the POS tag (null: none) and the tag.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub conll_columns: Option<(usize, Option<usize>, usize)>,
    /// JSON Lines keys and names of integer ids.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub jsonl: Option<crate::corpus::JsonlKeys>,
}

/// Which sub-words of a word carry its label in training (the manifest's and a fine-tuned model's
/// `nerpos.json`: `first` or `all`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LabelSubwords {
    /// The word's first sub-word (predictions are read there too).
    #[default]
    First,
    /// Every sub-word of the word.
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusStats {
    pub sentences: usize,
    pub words: usize,
    pub distinct_words: usize,
    /// Distinct tags in the source, before IOB1 conversion and dropped types.
    pub tags: usize,
    /// Distinct POS tags in the whole source.
    pub pos_tags: usize,
    pub longest_sentence_words: usize,
    pub longest_sentence_subwords: usize,
    /// Words the tokenizer turned into nothing, given [UNK] instead.
    pub words_without_subwords: usize,
    /// Words with more sub-words than fit in one window; their trailing sub-words are cut (the label
    /// sits on the first, so none is lost).
    pub truncated_words: usize,
    /// Tagged tokens outside any well-formed chunk of the input's scheme (e.g. an IOB2 I-X that
    /// continues nothing; IOB1 input read as IOB2 shows many): they were read as `O`, as seqeval's
    /// strict mode reads them.
    #[serde(alias = "iob2_violations")]
    pub scheme_violations: usize,
    /// Where the first of them is (`file:line`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_violation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    pub train: SplitInfo,
    pub dev: SplitInfo,
    pub test: SplitInfo,
}

impl Splits {
    pub fn get(&self, split: Split) -> &SplitInfo {
        match split {
            Split::Train => &self.train,
            Split::Dev => &self.dev,
            Split::Test => &self.test,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub sentences: usize,
    pub words: usize,
    /// Sub-words of the words, each word counted once, special tokens excluded.
    pub subwords: usize,
    /// Sum of row lengths: special tokens and overlap repeats included.
    pub tokens: usize,
    /// Rows: one per sentence, more for sentences longer than `max_len`.
    pub windows: usize,
    /// Sentences split into more than one window.
    pub windowed_sentences: usize,
    /// Positions with a label other than -100; equals `words` when labelling first sub-words.
    pub labelled: usize,
    /// Words whose POS tag is not in the training split's vocabulary (mapped to `<unk>`).
    pub unknown_pos: usize,
    pub shards: Vec<ShardInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Path relative to the dataset directory.
    pub file: String,
    pub rows: usize,
    pub bytes: u64,
    pub sha256: String,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                PrepError::dataset(
                    dir,
                    format!("no {MANIFEST} (not a nerpos-prep output folder)"),
                )
            } else {
                PrepError::io(&path, e)
            }
        })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| PrepError::dataset(dir, format!("{MANIFEST}: {e}")))?;
        if manifest.format != FORMAT || manifest.format_version != FORMAT_VERSION {
            return Err(PrepError::dataset(
                dir,
                format!(
                    "{MANIFEST} is {} version {}; this build reads {FORMAT} version {FORMAT_VERSION}",
                    manifest.format, manifest.format_version
                ),
            ));
        }
        Ok(manifest)
    }

    /// Pretty JSON with a trailing newline; field order is fixed, so equal manifests are equal bytes.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest serialises");
        s.push('\n');
        s
    }
}
