//! What `nerpos-predict` reads: tokenised corpora (every `nerpos-prep` format) whole, as `nerpos-prep`
//! reads them, and raw text line by line (a file of any size in bounded memory).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use nerpos_prep::args::ReadArgs;
use nerpos_prep::corpus::{self, Format};
use nerpos_prep::encoding::{Detected, TextEncoding};
use nerpos_prep::tags::{Relabeler, Scheme};
use nerpos_prep::words::split_words;

/// Input formats: every corpus format `nerpos-prep` reads (its readers, its flags), and raw text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Corpus(Format),
    /// Raw text, one sentence (or paragraph) per line: words split off as the training corpora split
    /// them (punctuation, clitics, quotes; `nerpos_prep::words`), each with its character span.
    Text,
}

impl clap::ValueEnum for InputFormat {
    fn value_variants<'a>() -> &'a [Self] {
        // The corpus formats as nerpos-prep lists them: a format added there is read here too.
        static ALL: OnceLock<Vec<InputFormat>> = OnceLock::new();
        ALL.get_or_init(|| {
            let corpora = Format::value_variants().iter().copied();
            corpora
                .map(InputFormat::Corpus)
                .chain([InputFormat::Text])
                .collect()
        })
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        match self {
            InputFormat::Corpus(f) => f.to_possible_value(),
            InputFormat::Text => Some(
                clap::builder::PossibleValue::new("text")
                    .help("Raw text, one sentence (or paragraph) per line"),
            ),
        }
    }
}

/// One input sentence.
#[derive(Debug, Clone)]
pub struct Sentence {
    pub id: String,
    /// The input line (plain text: one sentence per line, empty lines kept as empty sentences).
    pub line: Option<u64>,
    pub words: Vec<String>,
    /// Empty for plain text.
    pub pos: Vec<String>,
    pub gold: Option<Vec<String>>,
    /// The text the words are in, and each word's character span in it: the input line for raw
    /// text, the words joined by single spaces for tokenised input.
    pub text: String,
    pub spans: Vec<Range<usize>>,
}

impl Sentence {
    /// A tokenised sentence: its text is its words joined by single spaces.
    pub fn tokenised(
        id: String,
        line: Option<u64>,
        words: Vec<String>,
        pos: Vec<String>,
        gold: Option<Vec<String>>,
    ) -> Sentence {
        let mut text = String::new();
        let mut spans = Vec::with_capacity(words.len());
        let mut at = 0;
        for w in &words {
            if !text.is_empty() {
                text.push(' ');
                at += 1;
            }
            text.push_str(w);
            let n = w.chars().count();
            spans.push(at..at + n);
            at += n;
        }
        Sentence {
            id,
            line,
            words,
            pos,
            gold,
            text,
            spans,
        }
    }
}

/// Reads a tokenised input file (GMB, CoNLL, JSON Lines) whole (raw text streams: [`TextLines`]).
/// With `scheme`, gold tags are converted to IOB2 as `nerpos-prep` converts them; without, they are
/// kept as written.
pub fn read_input(
    path: &Path,
    format: InputFormat,
    args: &ReadArgs,
    scheme: Option<Scheme>,
) -> anyhow::Result<Vec<Sentence>> {
    let InputFormat::Corpus(corpus_format) = format else {
        bail!("raw text is read line by line (TextLines)")
    };
    let corpus = corpus::read(path, &args.options(corpus_format)?)?;
    let mut gold = gold_tags(&corpus, scheme)?.into_iter();
    Ok(corpus
        .sentences
        .iter()
        .map(|s| {
            let tokens = corpus.tokens_of(s);
            let words = tokens
                .iter()
                .map(|t| corpus.words.name(t.word).to_owned())
                .collect();
            let pos = if corpus.has_pos {
                tokens
                    .iter()
                    .map(|t| corpus.pos.name(t.pos).to_owned())
                    .collect()
            } else {
                Vec::new()
            };
            let line = (!corpus.line_per_token).then_some(s.line);
            Sentence::tokenised(s.id.clone(), line, words, pos, gold.next())
        })
        .collect())
}

/// Each sentence's gold tags: as written, or converted from `scheme` to IOB2 (tokens outside any
/// well-formed chunk become O and are counted, as in `nerpos-prep`).
fn gold_tags(corpus: &corpus::Corpus, scheme: Option<Scheme>) -> anyhow::Result<Vec<Vec<String>>> {
    let raw_of = |s: &corpus::Sentence| corpus.tokens_of(s).iter().map(|t| t.tag);
    let Some(scheme) = scheme else {
        let names = |s| raw_of(s).map(|t| corpus.tags.name(t).to_owned()).collect();
        return Ok(corpus.sentences.iter().map(names).collect());
    };
    let relabeler = Relabeler::new(corpus.tags.names(), &[], scheme).map_err(|e| {
        let (file, line) = corpus.tag_lines[e.raw];
        let what = format!(
            "tag {:?} is not in the {} scheme",
            corpus.tags.name(e.raw as u32),
            scheme.name()
        );
        anyhow::Error::new(corpus.error_at(file, line, what))
    })?;
    let mut violations = 0;
    let out = corpus
        .sentences
        .iter()
        .map(|s| {
            let mut ids = Vec::with_capacity(s.len);
            violations += relabeler.sentence(raw_of(s), &mut ids);
            ids.iter()
                .map(|&l| relabeler.labels[l as usize].clone())
                .collect()
        })
        .collect();
    if violations > 0 {
        tracing::warn!(
            violations,
            "gold tokens outside any well-formed {} chunk were read as O",
            scheme.name()
        );
    }
    Ok(out)
}

/// Whether the tokenizer deletes `c` (BERT's `clean_text`): NUL, U+FFFD and control characters
/// other than whitespace.
fn deleted_by_tokenizer(c: char) -> bool {
    c == '\u{FFFD}' || (c.is_control() && !c.is_whitespace())
}

/// Raw text read line by line: every line gives a sentence (an empty line an empty one), so that
/// output sentence i is input line i. Words are split as the training corpora split them, each with
/// its character span in the line; control characters are left out of the words as the tokenizer
/// would delete them, and counted.
pub struct TextLines {
    path: PathBuf,
    reader: BufReader<File>,
    encoding: Detected,
    line: u64,
    /// Bytes read so far (for progress).
    pub bytes_read: u64,
    /// Control characters removed, and the first line that had one.
    pub removed: (usize, Option<u64>),
    buf: Vec<u8>,
}

impl TextLines {
    /// Opens `path`, deciding its encoding first (`Auto`: one pass over the file, as
    /// `nerpos_prep::encoding` decides it for a whole file).
    pub fn open(path: &Path, wanted: TextEncoding) -> anyhow::Result<TextLines> {
        let encoding = nerpos_prep::encoding::detect_file(path, wanted)?;
        let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(TextLines {
            path: path.to_owned(),
            reader: BufReader::with_capacity(1 << 20, file),
            encoding,
            line: 0,
            bytes_read: 0,
            removed: (0, None),
            buf: Vec::new(),
        })
    }

    /// The next line's sentence; `None` at the end of the file.
    pub fn next_sentence(&mut self) -> anyhow::Result<Option<Sentence>> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .with_context(|| format!("reading {}", self.path.display()))?;
        if n == 0 {
            return Ok(None);
        }
        self.bytes_read += n as u64;
        self.line += 1;
        // A line ends at `\n`; a Windows `\r\n` leaves no `\r` in the sentence's text.
        let mut bytes = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if self.line == 1 && self.encoding == Detected::Utf8Bom {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        let text = nerpos_prep::encoding::decode_line(&self.path, self.line, bytes, self.encoding)?;
        let dropped = text.chars().filter(|&c| deleted_by_tokenizer(c)).count();
        if dropped > 0 {
            self.removed.0 += dropped;
            self.removed.1.get_or_insert(self.line);
        }
        let words = split_words(&text, deleted_by_tokenizer);
        Ok(Some(Sentence {
            id: self.line.to_string(),
            line: Some(self.line),
            spans: words.iter().map(|w| w.span.clone()).collect(),
            words: words.into_iter().map(|w| w.text).collect(),
            pos: Vec::new(),
            gold: None,
            text,
        }))
    }
}
