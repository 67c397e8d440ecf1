//! Reading token-level corpora into sentences of (word, POS, tag).
//!
//! Words, POS tags and tags are interned: a corpus has ~1M tokens but only ~35k distinct words, and the
//! tokenizer runs once per distinct word.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;
use sha2::Digest;

use crate::encoding::{self, Detected, TextEncoding};
use crate::error::{PrepError, Result};
use crate::tags;

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
    pub fn name(self) -> &'static str {
        match self {
            Format::Gmb => "gmb",
            Format::Conll => "conll",
            Format::Jsonl => "jsonl",
            Format::Hf => "hf",
        }
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

/// The keys of a JSON Lines corpus, and the names of integer tag and POS ids.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JsonlKeys {
    pub tokens: String,
    pub tags: String,
    /// None: the corpus has no POS tags.
    pub pos: Option<String>,
    /// Names of integer tag ids, in id order (`datasets`' ClassLabel names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_names: Option<Vec<String>>,
}

impl Default for JsonlKeys {
    fn default() -> Self {
        JsonlKeys {
            tokens: "tokens".into(),
            tags: "ner_tags".into(),
            pos: None,
            tag_names: None,
            pos_names: None,
        }
    }
}

/// How to read a corpus file.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadOptions {
    pub format: Format,
    pub encoding: TextEncoding,
    pub conll: ConllColumns,
    pub jsonl: JsonlKeys,
}

impl ReadOptions {
    pub fn new(format: Format) -> ReadOptions {
        ReadOptions {
            format,
            encoding: TextEncoding::Auto,
            conll: ConllColumns::default(),
            jsonl: JsonlKeys::default(),
        }
    }
}

/// Distinct strings with dense ids in first-seen order.
#[derive(Debug, Default, Clone)]
pub struct Interner {
    names: Vec<String>,
    // Fx: a million lookups of short strings; SipHash's DoS resistance buys nothing here.
    index: FxHashMap<String, u32>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.index.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(s.to_owned());
        self.index.insert(s.to_owned(), id);
        id
    }

    pub fn index_of(&self, s: &str) -> Option<u32> {
        self.index.get(s).copied()
    }

    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Interns every name of `other`: its ids mapped to this interner's.
    fn absorb(&mut self, other: &Interner) -> Vec<u32> {
        other.names.iter().map(|n| self.intern(n)).collect()
    }
}

/// A word's shape, as an uncased tokenizer cannot see it: `Aa` (capitalised), `AA` (all capitals, two
/// letters or more), `a` (no capital), `0` (a digit, no letter), `.` (neither).
pub fn word_shape(word: &str) -> &'static str {
    let mut chars = word.chars().filter(|c| c.is_alphanumeric());
    let Some(first) = chars.next() else {
        return ".";
    };
    let letters: Vec<char> = std::iter::once(first)
        .chain(chars)
        .filter(|c| c.is_alphabetic())
        .collect();
    match letters.first() {
        None => "0",
        Some(c) if !c.is_uppercase() => "a",
        Some(_) if letters.len() > 1 && letters.iter().all(|c| c.is_uppercase()) => "AA",
        Some(_) => "Aa",
    }
}

/// The POS tag `pos` of `word` crossed with the word's shape (`NNP|Aa`): the vocabulary of
/// `nerpos-prep --pos-shape`, which `nerpos-predict` applies to its input alike.
pub fn pos_with_shape(pos: &str, word: &str) -> String {
    format!("{pos}|{}", word_shape(word))
}

impl Corpus {
    /// Every token's POS tag crossed with its word's shape ([`pos_with_shape`]); a corpus without
    /// POS tags gets the shapes alone as its tags.
    pub fn with_pos_shapes(mut self) -> Corpus {
        let mut pos = Interner::default();
        for t in &mut self.tokens {
            let tag = pos_with_shape(self.pos.name(t.pos), self.words.name(t.word));
            t.pos = pos.intern(&tag);
        }
        self.pos = pos;
        self.has_pos = true;
        self
    }
}

/// One token: ids into the corpus' interners.
#[derive(Debug, Clone, Copy)]
pub struct Token {
    pub word: u32,
    pub pos: u32,
    pub tag: u32,
}

/// A sentence: its id in the source, its file (index into `Corpus::files`), the line of its first
/// token, and its tokens' range.
#[derive(Debug, Clone)]
pub struct Sentence {
    pub id: String,
    pub file: usize,
    pub line: u64,
    pub start: usize,
    pub len: usize,
}

#[derive(Debug)]
pub struct Corpus {
    /// The files read, in order (one, or the train/dev/test files of a pre-split corpus).
    pub files: Vec<PathBuf>,
    pub encoding: Detected,
    /// False for a corpus read without POS tags (every token's POS is the placeholder `""`).
    pub has_pos: bool,
    /// One token per line (GMB, CoNLL) rather than one sentence per line (JSON Lines).
    pub line_per_token: bool,
    /// Positions are records (0-based) of a columnar file, not lines (Hugging Face datasets).
    pub records: bool,
    pub words: Interner,
    pub pos: Interner,
    pub tags: Interner,
    pub tokens: Vec<Token>,
    pub sentences: Vec<Sentence>,
    /// (file, line) of each distinct tag's first occurrence, for errors found after reading.
    pub tag_lines: Vec<(usize, u64)>,
}

impl Corpus {
    pub fn tokens_of(&self, s: &Sentence) -> &[Token] {
        &self.tokens[s.start..s.start + s.len]
    }

    /// Where the token of `s` at `offset` is, as `file:line`.
    pub fn location(&self, s: &Sentence, offset: usize) -> String {
        // CoNLL sentences have no blank line inside; a GMB sentence with one is off by its blank lines.
        let line = if self.line_per_token {
            s.line + offset as u64
        } else {
            s.line
        };
        if self.records {
            return format!("{}: record {line}", self.files[s.file].display());
        }
        format!("{}:{line}", self.files[s.file].display())
    }

    /// An input error at `line` (a record, in a columnar corpus) of file `file`.
    pub fn error_at(&self, file: usize, line: u64, msg: impl Into<String>) -> PrepError {
        let path = self.files[file].clone();
        if self.records {
            return PrepError::Record {
                path,
                record: line,
                msg: msg.into(),
            };
        }
        PrepError::input(path, line, msg)
    }

    fn path(&self) -> &Path {
        &self.files[0]
    }

    pub(crate) fn new(path: &Path, encoding: Detected) -> Corpus {
        Corpus {
            files: vec![path.to_owned()],
            has_pos: true,
            line_per_token: true,
            records: false,
            encoding,
            words: Interner::default(),
            pos: Interner::default(),
            tags: Interner::default(),
            tokens: Vec::new(),
            sentences: Vec::new(),
            tag_lines: Vec::new(),
        }
    }

    /// Adds a token to the current (last) sentence after validating it; `pos` is None in a corpus
    /// without POS tags.
    pub(crate) fn push(
        &mut self,
        line: u64,
        word: &str,
        pos: Option<&str>,
        tag: &str,
    ) -> Result<()> {
        if word.trim().is_empty() {
            return Err(self.error_at(0, line, "empty word (expected a non-blank word)"));
        }
        if pos.is_some_and(|p| p.trim().is_empty()) {
            return Err(self.error_at(
                0,
                line,
                format!("empty POS tag for word {word:?} (expected a POS tag)"),
            ));
        }
        if tags::parse(tag).is_none() {
            return Err(self.error_at(
                0,
                line,
                format!("invalid tag {tag:?} for word {word:?} ({})", tags::EXPECTED),
            ));
        }
        let tag = self.tags.intern(tag);
        if tag as usize == self.tag_lines.len() {
            self.tag_lines.push((0, line));
        }
        let token = Token {
            word: self.words.intern(word),
            pos: self.pos.intern(pos.map_or("", str::trim)),
            tag,
        };
        self.tokens.push(token);
        if let Some(s) = self.sentences.last_mut() {
            s.len += 1;
        }
        Ok(())
    }

    pub(crate) fn start_sentence(&mut self, id: String, line: u64) {
        self.sentences.push(Sentence {
            id,
            file: 0,
            line,
            start: self.tokens.len(),
            len: 0,
        });
    }

    pub(crate) fn finish(self) -> Result<Corpus> {
        if self.sentences.is_empty() {
            return Err(PrepError::File {
                path: self.path().to_owned(),
                msg: "no sentences (expected at least one data row)".into(),
            });
        }
        Ok(self)
    }

    /// Appends `other`'s sentences (read from another file) after this corpus's, re-interning its
    /// words, POS tags and tags.
    pub fn append(&mut self, other: Corpus) {
        let file = self.files.len();
        self.files.extend(other.files);
        self.has_pos &= other.has_pos;
        let words = self.words.absorb(&other.words);
        let pos = self.pos.absorb(&other.pos);
        let tags: Vec<u32> = other
            .tags
            .names()
            .iter()
            .zip(&other.tag_lines)
            .map(|(t, &(_, line))| {
                let id = self.tags.intern(t);
                if id as usize == self.tag_lines.len() {
                    self.tag_lines.push((file, line));
                }
                id
            })
            .collect();
        let offset = self.tokens.len();
        self.tokens.extend(other.tokens.iter().map(|t| Token {
            word: words[t.word as usize],
            pos: pos[t.pos as usize],
            tag: tags[t.tag as usize],
        }));
        self.sentences
            .extend(other.sentences.into_iter().map(|s| Sentence {
                start: s.start + offset,
                file: file + s.file,
                ..s
            }));
    }
}

/// Reads and validates a corpus file (or, for [`Format::Hf`], a `save_to_disk` folder).
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Corpus> {
    load(path, opts).map(|l| l.corpus)
}

/// Reads and validates a corpus input, with the size and SHA-256 of the bytes read.
pub fn load(path: &Path, opts: &ReadOptions) -> Result<crate::hf::Loaded> {
    if opts.format == Format::Hf {
        return crate::hf::load(path, &opts.jsonl);
    }
    let bytes = std::fs::read(path).map_err(|e| PrepError::io(path, e))?;
    let (sha256, corpus) = rayon::join(
        || format!("{:x}", sha2::Sha256::digest(&bytes)),
        || parse(path, &bytes, opts),
    );
    Ok(crate::hf::Loaded {
        corpus: corpus?,
        bytes: bytes.len() as u64,
        sha256,
    })
}

/// Decodes and validates the bytes of a corpus file read from `path`.
pub fn parse(path: &Path, bytes: &[u8], opts: &ReadOptions) -> Result<Corpus> {
    if bytes.is_empty() {
        return Err(PrepError::File {
            path: path.to_owned(),
            msg: "the file is empty (expected a corpus)".into(),
        });
    }
    let (text, detected) = encoding::decode(path, bytes, opts.encoding)?;
    match opts.format {
        Format::Gmb => read_gmb(path, &text, detected),
        Format::Conll => read_conll(path, &text, detected, opts.conll),
        Format::Jsonl => crate::jsonl::read(path, &text, detected, &opts.jsonl),
        Format::Hf => Err(PrepError::Options(
            "Hugging Face datasets are read from their files (corpus::load), not decoded as text"
                .into(),
        )),
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

fn read_conll(path: &Path, text: &str, detected: Detected, cols: ConllColumns) -> Result<Corpus> {
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

    #[test]
    fn shapes_cross_the_pos_tags() {
        for (word, shape) in [
            ("London", "Aa"),
            ("NATO", "AA"),
            ("U.S.", "AA"),
            ("I", "Aa"),
            ("iPhone", "a"),
            ("talks", "a"),
            ("1990s", "a"),
            ("2,000", "0"),
            (",", "."),
            ("Émile", "Aa"),
        ] {
            assert_eq!(word_shape(word), shape, "{word}");
        }
        let cols = ConllColumns {
            word: 0,
            pos: Some(1),
            tag: 2,
        };
        let text = "Paris NNP B-geo\nis VBZ O\n";
        let c = read_conll(Path::new("c"), text, Detected::Utf8, cols)
            .unwrap()
            .with_pos_shapes();
        let tags: Vec<&str> = c.tokens.iter().map(|t| c.pos.name(t.pos)).collect();
        assert_eq!(tags, ["NNP|Aa", "VBZ|a"]);
        assert_eq!(pos_with_shape("", "UN"), "|AA");
    }
}
