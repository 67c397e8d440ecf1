//! Kaggle/GMB CSV: `Sentence #,Word,POS,Tag`, the sentence id on a sentence's first row only.

use std::collections::HashMap;
use std::path::Path;

use crate::corpus::{Corpus, ReadOptions};
use crate::encoding::{self, Detected};
use crate::error::{PrepError, Result};
use crate::formats::{Loaded, Reader, Settings, load_text};

pub struct Gmb;

impl Reader for Gmb {
    fn name(&self) -> &'static str {
        "gmb"
    }

    fn settings(&self) -> Settings {
        Settings::Fixed
    }

    fn load(&self, path: &Path, opts: &ReadOptions) -> Result<Loaded> {
        load_text(path, opts, |text, detected| read_gmb(path, text, detected))
    }
}

/// Line numbers of CSV records from their byte offsets. The csv crate's own line count is off after
/// CRLF line ends and skipped blank lines, and its record offset may point at the previous record's
/// line end, so we skip line-end bytes and count newlines ourselves, incrementally (records come in
/// order).
struct LineCursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    line: u64,
}

impl<'a> LineCursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        LineCursor {
            bytes,
            pos: 0,
            line: 1,
        }
    }

    fn line_at(&mut self, mut start: usize) -> u64 {
        while start < self.bytes.len() && matches!(self.bytes[start], b'\r' | b'\n') {
            start += 1;
        }
        let start = start.max(self.pos);
        self.line += self.bytes[self.pos..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        self.pos = start;
        self.line
    }
}

const GMB_COLUMNS: [&str; 4] = ["Sentence #", "Word", "POS", "Tag"];

fn read_gmb(path: &Path, text: &str, detected: Detected) -> Result<Corpus> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut record = csv::StringRecord::new();
    let mut corpus = Corpus::new(path, detected);
    let bytes = text.as_bytes();
    let csv_err = |e: csv::Error| {
        let line = e
            .position()
            .map_or(0, |p| encoding::line_of(bytes, p.byte() as usize));
        PrepError::input(path, line, format!("malformed CSV: {e}"))
    };
    let mut lines = LineCursor::new(bytes);

    if !reader.read_record(&mut record).map_err(csv_err)? {
        return Err(PrepError::File {
            path: path.to_owned(),
            msg: "no rows (expected a header `Sentence #,Word,POS,Tag` and data)".into(),
        });
    }
    check_gmb_header(path, &record)?;
    let mut seen_ids: HashMap<String, u64> = HashMap::new();
    while reader.read_record(&mut record).map_err(csv_err)? {
        let line = lines.line_at(record.position().map_or(0, |p| p.byte() as usize));
        gmb_row(path, line, &record, &mut seen_ids, &mut corpus)?;
    }
    corpus.finish()
}

/// The first row must be GMB's header (any case); a missing header is told apart from a wrong one.
fn check_gmb_header(path: &Path, record: &csv::StringRecord) -> Result<()> {
    let header: Vec<&str> = record.iter().map(str::trim).collect();
    let matches = |want: &str, got: &str| want.eq_ignore_ascii_case(got);
    if header.len() == GMB_COLUMNS.len()
        && GMB_COLUMNS.iter().zip(&header).all(|(w, g)| matches(w, g))
    {
        return Ok(());
    }
    let looks_like_data = header.len() == GMB_COLUMNS.len()
        && !GMB_COLUMNS
            .iter()
            .any(|w| header.iter().any(|g| matches(w, g)));
    let msg = if looks_like_data {
        format!(
            "no header: the first row is {:?}; expected the header `Sentence #,Word,POS,Tag`",
            header.join(",")
        )
    } else {
        format!(
            "header has {} column(s) {:?}; expected the 4 columns `Sentence #,Word,POS,Tag`",
            header.len(),
            header.join(",")
        )
    };
    Err(PrepError::input(path, 1, msg))
}

/// One data row: a sentence id (unique) starts a sentence, an empty one continues the current one.
fn gmb_row(
    path: &Path,
    line: u64,
    record: &csv::StringRecord,
    seen_ids: &mut HashMap<String, u64>,
    corpus: &mut Corpus,
) -> Result<()> {
    if record.len() != GMB_COLUMNS.len() {
        return Err(PrepError::input(
            path,
            line,
            format!(
                "{} field(s); expected 4 (Sentence #, Word, POS, Tag) — a word containing a comma \
                 must be quoted",
                record.len()
            ),
        ));
    }
    let id = record[0].trim();
    if !id.is_empty() {
        if let Some(first) = seen_ids.insert(id.to_owned(), line) {
            return Err(PrepError::input(
                path,
                line,
                format!(
                    "sentence id {id:?} was already used at line {first} (expected unique ids)"
                ),
            ));
        }
        corpus.start_sentence(id.to_owned(), line);
    } else if corpus.sentences.is_empty() {
        return Err(PrepError::input(
            path,
            line,
            "the first data row has no sentence id (expected e.g. `Sentence: 1` in column `Sentence #`)",
        ));
    }
    corpus.push(line, &record[1], Some(&record[2]), record[3].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gmb(text: &str) -> Result<Corpus> {
        read_gmb(Path::new("c.csv"), text, Detected::Utf8)
    }

    fn words(c: &Corpus, s: usize) -> Vec<&str> {
        c.tokens_of(&c.sentences[s])
            .iter()
            .map(|t| c.words.name(t.word))
            .collect()
    }

    #[test]
    fn gmb_quoting_and_crlf() {
        let c = gmb("Sentence #,Word,POS,Tag\r\nSentence: 1,\"10,000\",CD,O\r\n,\",\",\",\",O\r\n,\"\"\"\",``,O\r\nSentence: 2,Paris,NNP,B-geo\r\n").unwrap();
        assert_eq!(c.sentences.len(), 2);
        assert_eq!(words(&c, 0), ["10,000", ",", "\""]);
        assert_eq!(c.pos.name(c.tokens[1].pos), ",");
        assert_eq!(c.sentences[1].id, "Sentence: 2");
        assert_eq!(c.sentences[1].line, 5);
        let c = gmb("Sentence #,Word,POS,Tag\n\n\nSentence: 1,a,DT,O\r\n\r\n,b,DT,O\n").unwrap();
        assert_eq!(c.sentences[0].line, 4);
        let msg = gmb("Sentence #,Word,POS,Tag\r\nSentence: 1,a,DT,O\r\n\r\n,b,DT,Q\r\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("c.csv:4:"), "{msg}");
    }

    #[test]
    fn gmb_errors_name_the_line() {
        let cases = [
            ("Sentence #,Word,POS\nSentence: 1,a,DT\n", ":1:", "3 column"),
            ("Sentence: 1,a,DT,O\n", ":1:", "no header"),
            (
                "Sentence #,Word,POS,Tag\n,a,DT,O\n",
                ":2:",
                "no sentence id",
            ),
            (
                "Sentence #,Word,POS,Tag\nSentence: 1,a,DT,O\n,b,DT,O,x\n",
                ":3:",
                "5 field",
            ),
            (
                "Sentence #,Word,POS,Tag\nSentence: 1,a,DT,O\n,b,DT\n",
                ":3:",
                "3 field",
            ),
            (
                "Sentence #,Word,POS,Tag\nSentence: 1,a,DT,O\n, ,DT,O\n",
                ":3:",
                "empty word",
            ),
            (
                "Sentence #,Word,POS,Tag\nSentence: 1,a,DT,B-\n",
                ":2:",
                "invalid tag",
            ),
            (
                "Sentence #,Word,POS,Tag\nSentence: 1,a,DT,X\n",
                ":2:",
                "O, B-TYPE or I-TYPE",
            ),
            (
                "Sentence #,Word,POS,Tag\nSentence: 1,a,,O\n",
                ":2:",
                "empty POS",
            ),
            (
                "Sentence #,Word,POS,Tag\nS1,a,DT,O\nS1,b,DT,O\n",
                ":3:",
                "already used at line 2",
            ),
        ];
        for (text, line, what) in cases {
            let msg = gmb(text).unwrap_err().to_string();
            assert!(
                msg.contains(line) && msg.contains(what),
                "{text:?} -> {msg}"
            );
        }
        let msg = gmb("Sentence #,Word,POS,Tag\n").unwrap_err().to_string();
        assert!(msg.contains("no sentences"), "{msg}");
    }
}
