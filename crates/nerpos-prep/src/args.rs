//! The command-line flags that say how to read a corpus file, shared by `nerpos-prep` and
//! `nerpos-predict` so that both read the same files the same way.

use std::path::PathBuf;
use std::str::FromStr;

use crate::corpus::{ConllColumns, Format, JsonlKeys, ReadOptions};
use crate::encoding::TextEncoding;
use crate::error::{PrepError, Result};
use crate::formats::{Settings, jsonl};

/// A CoNLL column number, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalColumn(pub Option<usize>);

impl FromStr for OptionalColumn {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(OptionalColumn(None));
        }
        s.parse()
            .map(|c| OptionalColumn(Some(c)))
            .map_err(|_| format!("{s:?}: expected a 0-based column number or `none`"))
    }
}

/// How to read a corpus file.
#[derive(Debug, Clone, clap::Args)]
pub struct ReadArgs {
    /// Text encoding of the input.
    #[arg(long, value_enum, default_value_t = TextEncoding::Auto)]
    pub encoding: TextEncoding,
    /// CoNLL: column of the word (0-based).
    #[arg(long, default_value_t = 0)]
    pub word_col: usize,
    /// CoNLL: column of the POS tag, or `none` for a corpus without POS tags.
    #[arg(long, default_value = "1")]
    pub pos_col: OptionalColumn,
    /// CoNLL: column of the NER tag.
    #[arg(long, default_value_t = 3)]
    pub tag_col: usize,
    /// JSON Lines and hf: key of the token list [default: tokens].
    #[arg(long, value_name = "KEY")]
    pub tokens_key: Option<String>,
    /// JSON Lines and hf: key of the NER tag list [default: ner_tags].
    #[arg(long, value_name = "KEY")]
    pub tags_key: Option<String>,
    /// JSON Lines and hf: key of the POS tag list (without it: JSON Lines is read without POS tags,
    /// hf with `pos_tags` when the records have it).
    #[arg(long, value_name = "KEY")]
    pub pos_key: Option<String>,
    /// JSON Lines and hf: names of integer NER tag ids, one per line in id order (hf: instead of
    /// the ClassLabel names the dataset stores).
    #[arg(long, value_name = "FILE")]
    pub tag_names: Option<PathBuf>,
    /// JSON Lines and hf: names of integer POS tag ids, one per line in id order.
    #[arg(long, value_name = "FILE")]
    pub pos_names: Option<PathBuf>,
}

impl ReadArgs {
    /// The read options for `format`; flags of another format are refused rather than ignored.
    pub fn options(&self, format: Format) -> Result<ReadOptions> {
        let jsonl_flags = [
            ("--tokens-key", self.tokens_key.is_some()),
            ("--tags-key", self.tags_key.is_some()),
            ("--pos-key", self.pos_key.is_some()),
            ("--tag-names", self.tag_names.is_some()),
            ("--pos-names", self.pos_names.is_some()),
        ];
        let reader = format.reader();
        if reader.settings() != Settings::Keys
            && let Some((flag, _)) = jsonl_flags.iter().find(|(_, given)| *given)
        {
            return Err(PrepError::Options(format!(
                "{flag} applies to --format {} only (the input format is {})",
                listed(&Format::reading(Settings::Keys)),
                format.name()
            )));
        }
        let defaults = JsonlKeys::default();
        let jsonl = JsonlKeys {
            tokens: self.tokens_key.clone().unwrap_or(defaults.tokens),
            tags: self.tags_key.clone().unwrap_or(defaults.tags),
            pos: self.pos_key.clone(),
            tag_names: self
                .tag_names
                .as_deref()
                .map(jsonl::read_names)
                .transpose()?,
            pos_names: self
                .pos_names
                .as_deref()
                .map(jsonl::read_names)
                .transpose()?,
        };
        let opts = ReadOptions {
            format,
            encoding: self.encoding,
            conll: ConllColumns {
                word: self.word_col,
                pos: self.pos_col.0,
                tag: self.tag_col,
            },
            jsonl,
        };
        reader.check(&opts)?;
        Ok(opts)
    }
}

/// `a`, `a and b`, `a, b and c`.
fn listed(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_column() {
        assert_eq!("none".parse::<OptionalColumn>(), Ok(OptionalColumn(None)));
        assert_eq!("2".parse::<OptionalColumn>(), Ok(OptionalColumn(Some(2))));
        assert!("x".parse::<OptionalColumn>().is_err());
    }
}
