//! Reading token-level corpora into sentences of (word, POS, tag).
//!
//! Words, POS tags and tags are interned: a corpus has ~1M tokens but only ~35k distinct words, and the
//! tokenizer runs once per distinct word.

use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

use crate::encoding::{Detected, TextEncoding};
use crate::error::{PrepError, Result};
use crate::tags;

pub use crate::formats::Format;
pub use crate::formats::conll::ConllColumns;
pub use crate::formats::jsonl::JsonlKeys;

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

/// Reads and validates a corpus file (or a folder, where its format has them).
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Corpus> {
    load(path, opts).map(|l| l.corpus)
}

/// Reads and validates a corpus input, with the size and SHA-256 of the bytes read.
pub fn load(path: &Path, opts: &ReadOptions) -> Result<crate::formats::Loaded> {
    opts.format.reader().load(path, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::conll::read_conll;

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
