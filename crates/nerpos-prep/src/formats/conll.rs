//! CoNLL: whitespace-separated columns, a blank line between sentences, `-DOCSTART-` lines skipped;
//! which column holds the word, the POS tag and the NER tag is an option.

use std::path::Path;

use crate::corpus::{Corpus, ReadOptions};
use crate::encoding::Detected;
use crate::error::{PrepError, Result};
use crate::formats::{Loaded, Reader, Settings, load_text};

pub struct Conll;

impl Reader for Conll {
    fn name(&self) -> &'static str {
        "conll"
    }

    fn settings(&self) -> Settings {
        Settings::Columns
    }

    fn load(&self, path: &Path, opts: &ReadOptions) -> Result<Loaded> {
        load_text(path, opts, |text, detected| {
            read_conll(path, text, detected, opts.conll)
        })
    }
}

/// Which CoNLL columns hold the word, the POS tag (none: a corpus without POS) and the NER tag
/// (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ConllColumns {
    pub word: usize,
    pub pos: Option<usize>,
    pub tag: usize,
}

impl Default for ConllColumns {
    /// CoNLL-2003: `word POS chunk NER`.
    fn default() -> Self {
        ConllColumns {
            word: 0,
            pos: Some(1),
            tag: 3,
        }
    }
}

pub(crate) fn read_conll(
    path: &Path,
    text: &str,
    detected: Detected,
    cols: ConllColumns,
) -> Result<Corpus> {
    let need = cols.word.max(cols.pos.unwrap_or(0)).max(cols.tag) + 1;
    let mut corpus = Corpus::new(path, detected);
    corpus.has_pos = cols.pos.is_some();
    let mut in_sentence = false;
    // Column count of the first token line: a line with another count is a broken row, not data.
    let mut width: Option<(usize, u64)> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let line = i as u64 + 1;
        // ASCII whitespace only: a no-break space inside a word is part of the word, not a separator.
        let fields: Vec<&str> = raw.split_ascii_whitespace().collect();
        if fields.is_empty() || fields[0] == "-DOCSTART-" {
            in_sentence = false;
            continue;
        }
        match width {
            None => width = Some((fields.len(), line)),
            Some((w, first)) if w != fields.len() => {
                return Err(PrepError::input(
                    path,
                    line,
                    format!(
                        "{} column(s), but line {first} has {w} (expected the same columns on every \
                         token line)",
                        fields.len()
                    ),
                ));
            }
            Some(_) => {}
        }
        if fields.len() < need {
            return Err(PrepError::input(
                path,
                line,
                format!(
                    "{} column(s); expected at least {need} (word in column {}, POS in {}, tag in {})",
                    fields.len(),
                    cols.word,
                    cols.pos.map_or("none".to_string(), |p| p.to_string()),
                    cols.tag
                ),
            ));
        }
        if !in_sentence {
            corpus.start_sentence((corpus.sentences.len() + 1).to_string(), line);
            in_sentence = true;
        }
        corpus.push(
            line,
            fields[cols.word],
            cols.pos.map(|p| fields[p]),
            fields[cols.tag],
        )?;
    }
    corpus.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(c: &Corpus, s: usize) -> Vec<&str> {
        c.tokens_of(&c.sentences[s])
            .iter()
            .map(|t| c.words.name(t.word))
            .collect()
    }

    #[test]
    fn conll_docstart_blank_lines_and_columns() {
        let text = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\r\n";
        let c = read_conll(
            Path::new("c.conll"),
            text,
            Detected::Utf8,
            ConllColumns::default(),
        )
        .unwrap();
        assert_eq!(c.sentences.len(), 2);
        assert_eq!(words(&c, 0), ["EU", "rejects"]);
        assert_eq!(c.tags.name(c.tokens[0].tag), "B-ORG");
        assert_eq!(c.sentences[1].line, 7);
        let cols = ConllColumns {
            word: 0,
            pos: Some(1),
            tag: 2,
        };
        let c = read_conll(Path::new("c"), "a X O\nb Y B-T\n", Detected::Utf8, cols).unwrap();
        assert_eq!(c.tags.name(c.tokens[1].tag), "B-T");
    }

    #[test]
    fn conll_errors_name_the_line() {
        let p = Path::new("c.conll");
        let cols = ConllColumns::default();
        let msg = read_conll(p, "a b c O\nx y z\n", Detected::Utf8, cols)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("c.conll:2:") && msg.contains("line 1 has 4"),
            "{msg}"
        );
        let msg = read_conll(p, "a b c\n", Detected::Utf8, cols)
            .unwrap_err()
            .to_string();
        assert!(msg.contains(":1:") && msg.contains("at least 4"), "{msg}");
        let msg = read_conll(p, "\n\n", Detected::Utf8, cols)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no sentences"), "{msg}");
    }
}
