//! `nerpos-predict`'s pieces: reading the input (GMB, CoNLL, JSON Lines, plain text), tagging it in windows, and
//! writing CoNLL, JSON Lines and `.npy` logits.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use nerpos_model::{BertNerPos, NerposMeta, RowView, WordPrediction, predict_rows};
use nerpos_prep::SubwordTokenizer;
use nerpos_prep::align::{Aligner, SentenceInput};
use nerpos_prep::args::ReadArgs;
use nerpos_prep::corpus::{self, Format};
use nerpos_prep::encoding::TextEncoding;
use nerpos_prep::manifest::LabelSubwords;
use nerpos_prep::tags::{Relabeler, Scheme};
use serde::Serialize;

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    Gmb,
    Conll,
    /// One JSON object per line with tokens and tags (and POS tags with --pos-key), as `datasets` writes.
    Jsonl,
    /// One sentence per line, words separated by whitespace, no POS tags (every POS is unknown).
    Text,
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
}

/// Reads the input file. With `scheme`, gold tags are converted to IOB2 as `nerpos-prep` converts
/// them; without, they are kept as written.
pub fn read_input(
    path: &Path,
    format: InputFormat,
    args: &ReadArgs,
    scheme: Option<Scheme>,
) -> anyhow::Result<Vec<Sentence>> {
    let corpus_format = match format {
        InputFormat::Gmb => Format::Gmb,
        InputFormat::Conll => Format::Conll,
        InputFormat::Jsonl => Format::Jsonl,
        InputFormat::Text => return read_text(path),
    };
    let corpus = corpus::read(path, &args.options(corpus_format)?)?;
    let mut gold = gold_tags(&corpus, scheme)?.into_iter();
    Ok(corpus
        .sentences
        .iter()
        .map(|s| {
            let tokens = corpus.tokens_of(s);
            Sentence {
                id: s.id.clone(),
                line: (!corpus.line_per_token).then_some(s.line),
                words: tokens
                    .iter()
                    .map(|t| corpus.words.name(t.word).to_owned())
                    .collect(),
                pos: if corpus.has_pos {
                    tokens
                        .iter()
                        .map(|t| corpus.pos.name(t.pos).to_owned())
                        .collect()
                } else {
                    Vec::new()
                },
                gold: gold.next(),
            }
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
        anyhow::anyhow!(
            "{}:{line}: tag {:?} is not in the {} scheme",
            corpus.files[file].display(),
            corpus.tags.name(e.raw as u32),
            scheme.name()
        )
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

/// Plain text: one sentence per line, words separated by whitespace. Every line gives a sentence (an
/// empty line an empty one), so that output sentence i is input line i; control characters are
/// removed as the tokenizer would remove them, and counted.
fn read_text(path: &Path) -> anyhow::Result<Vec<Sentence>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (text, _) =
        nerpos_prep::encoding::decode_keeping_controls(path, &bytes, TextEncoding::Auto)?;
    let mut removed = 0usize;
    let mut first: Option<usize> = None;
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let sentences: Vec<Sentence> = body
        .split('\n')
        .enumerate()
        .map(|(i, l)| {
            let dropped = l.chars().filter(|&c| deleted_by_tokenizer(c)).count();
            if dropped > 0 {
                removed += dropped;
                first.get_or_insert(i + 1);
            }
            let clean: String = l.chars().filter(|&c| !deleted_by_tokenizer(c)).collect();
            Sentence {
                id: (i + 1).to_string(),
                line: Some(i as u64 + 1),
                words: clean.split_whitespace().map(str::to_owned).collect(),
                pos: Vec::new(),
                gold: None,
            }
        })
        .collect();
    if let Some(line) = first {
        tracing::warn!(
            removed,
            first_line = line,
            "removed control characters from {} (as the tokenizer does)",
            path.display()
        );
    }
    if sentences.iter().all(|s| s.words.is_empty()) {
        bail!(
            "{}: no words (expected one sentence per line)",
            path.display()
        );
    }
    Ok(sentences)
}

/// A fine-tuned model with its tokenizer, ready to tag.
pub struct Tagger {
    pub model: BertNerPos,
    pub meta: NerposMeta,
    pub tokenizer: SubwordTokenizer,
    pub device: Device,
    pos_ids: HashMap<String, u32>,
}

impl Tagger {
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Tagger> {
        let (model, meta) = BertNerPos::load(dir, device)?;
        let tokenizer = SubwordTokenizer::load(dir)?;
        if let Some(expected) = &meta.tokenizer_fingerprint {
            if *expected != tokenizer.fingerprint {
                bail!(
                    "{}: the tokenizer files ({}) are not the ones the model was trained with ({expected})",
                    dir.display(),
                    tokenizer.fingerprint
                );
            }
        }
        let pos_ids = meta
            .pos
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        Ok(Tagger {
            model,
            meta,
            tokenizer,
            device: device.clone(),
            pos_ids,
        })
    }

    /// The POS id of word `k` of `s` (crossed with its shape when the model's POS vocabulary is;
    /// unknown tags, and sentences without tags, get the unknown id).
    fn pos_id(&self, s: &Sentence, k: usize) -> u32 {
        let tag = if self.meta.pos_shape {
            let pos = s.pos.get(k).map_or("", String::as_str);
            Some(nerpos_prep::corpus::pos_with_shape(pos, &s.words[k]))
        } else {
            s.pos.get(k).cloned()
        };
        tag.and_then(|p| self.pos_ids.get(&p).copied())
            .unwrap_or(self.meta.pos_unk_id)
    }

    /// Predictions for every word of every sentence, in order; `overlap` words of context are
    /// repeated between the windows of long sentences.
    pub fn tag(
        &self,
        sentences: &[Sentence],
        batch_size: usize,
        overlap: usize,
        keep_logits: bool,
        progress: bool,
    ) -> anyhow::Result<Vec<Vec<WordPrediction>>> {
        let mut distinct: HashMap<&str, u32> = HashMap::new();
        let mut words: Vec<String> = Vec::new();
        for w in sentences.iter().flat_map(|s| &s.words) {
            distinct.entry(w.as_str()).or_insert_with(|| {
                words.push(w.clone());
                (words.len() - 1) as u32
            });
        }
        let pieces = self.tokenizer.word_pieces(&words)?;
        let aligner = Aligner {
            prefix: self.tokenizer.prefix.clone(),
            suffix: self.tokenizer.suffix.clone(),
            max_len: self.meta.max_len,
            overlap,
            label_subwords: LabelSubwords::First,
            continuation: vec![0; self.meta.labels.len()],
        };
        let mut rows = Vec::new();
        for (i, s) in sentences.iter().enumerate() {
            let n = s.words.len();
            let input = SentenceInput {
                sentence_index: i as u32,
                sentence_id: &s.id,
                source_line: 0,
                pieces: s
                    .words
                    .iter()
                    .map(|w| pieces.of(distinct[w.as_str()]))
                    .collect(),
                labels: vec![0; n],
                pos_ids: (0..n).map(|k| self.pos_id(s, k)).collect(),
                words: s.words.iter().map(String::as_str).collect(),
                pos: vec![""; n],
                tags: vec![""; n],
            };
            rows.extend(aligner.rows(&input).0.into_iter().map(|r| (i, r)));
        }
        // Batches of similar length waste little on padding.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&k| rows[k].1.input_ids.len());
        let bar = if progress {
            ProgressBar::new(rows.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {human_pos}/{human_len} rows {per_sec} ETA {eta}",
            )?
            .progress_chars("=> "),
        );
        bar.set_message("tagging");
        let mut out: Vec<Vec<Option<WordPrediction>>> = sentences
            .iter()
            .map(|s| vec![None; s.words.len()])
            .collect();
        for batch in order.chunks(batch_size.max(1)) {
            let views: Vec<RowView> = batch.iter().map(|&k| RowView::from(&rows[k].1)).collect();
            let opts = nerpos_model::PredictOptions {
                keep_logits,
                pos: Default::default(),
            };
            let preds = predict_rows(&self.model, &views, opts, &self.device)?;
            for (&k, words) in batch.iter().zip(preds) {
                let s = rows[k].0;
                for p in words {
                    let slot = p.word as usize;
                    out[s][slot] = Some(p);
                }
            }
            bar.inc(batch.len() as u64);
        }
        bar.finish_and_clear();
        out.into_iter()
            .enumerate()
            .map(|(i, words)| {
                words
                    .into_iter()
                    .enumerate()
                    .map(|(w, p)| {
                        p.with_context(|| {
                            format!("sentence {}: word {w} got no prediction", sentences[i].id)
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

/// An entity in JSON Lines output.
#[derive(Debug, Serialize)]
pub struct Entity {
    #[serde(rename = "type")]
    pub ty: String,
    /// Word span [start, end).
    pub start: usize,
    pub end: usize,
    pub text: String,
    /// Mean probability of the entity's words' predicted tags (softmax probabilities, or a CRF head's
    /// marginals).
    pub score: f32,
}

#[derive(Debug, Serialize)]
struct JsonSentence<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
    words: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pos: &'a [String],
    tags: Vec<&'a str>,
    probs: Vec<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gold: Option<&'a [String]>,
    entities: Vec<Entity>,
}

/// The entities of a tagged sentence (seqeval's default rules, as nerpos-eval reads them).
pub fn entities_of(words: &[String], tags: &[&str], probs: &[f32]) -> Vec<Entity> {
    nerpos_eval::entities(tags)
        .into_iter()
        .map(|(ty, a, b)| Entity {
            ty,
            start: a,
            end: b + 1,
            text: words[a..=b].join(" "),
            score: probs[a..=b].iter().sum::<f32>() / (b + 1 - a) as f32,
        })
        .collect()
}

/// The seqeval report (default mode) of `preds` against the sentences' gold tags; `None` when a
/// sentence has none.
pub fn score(
    sentences: &[Sentence],
    preds: &[Vec<WordPrediction>],
    labels: &[String],
) -> anyhow::Result<Option<nerpos_eval::Report>> {
    if !sentences.iter().all(|s| s.gold.is_some()) {
        return Ok(None);
    }
    let (mut scorer, _) = nerpos_eval::Scorer::with_tags(nerpos_eval::Mode::Default, labels)?;
    for (s, p) in sentences.iter().zip(preds) {
        let gold: Vec<&str> = s.gold.iter().flatten().map(String::as_str).collect();
        let pred: Vec<&str> = p
            .iter()
            .map(|w| labels[w.label as usize].as_str())
            .collect();
        scorer.add(&gold, &pred)?;
    }
    Ok(Some(nerpos_eval::Report::new(&scorer.counts())))
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// word, POS, gold tag (when the input has one), predicted tag; a blank line between sentences.
    Conll,
    /// One JSON object per sentence: words, tags, probabilities, entities.
    Jsonl,
}

/// Writes the predictions as CoNLL or JSON Lines.
pub fn write_predictions(
    out: &mut dyn Write,
    format: OutputFormat,
    sentences: &[Sentence],
    preds: &[Vec<WordPrediction>],
    labels: &[String],
) -> anyhow::Result<()> {
    for (s, p) in sentences.iter().zip(preds) {
        let tags: Vec<&str> = p
            .iter()
            .map(|w| labels[w.label as usize].as_str())
            .collect();
        let probs: Vec<f32> = p.iter().map(|w| w.prob).collect();
        match format {
            OutputFormat::Conll => {
                for (i, word) in s.words.iter().enumerate() {
                    let pos = s.pos.get(i).map_or("_", String::as_str);
                    match &s.gold {
                        Some(g) => writeln!(out, "{word} {pos} {} {}", g[i], tags[i])?,
                        None => writeln!(out, "{word} {pos} {}", tags[i])?,
                    }
                }
                writeln!(out)?;
            }
            OutputFormat::Jsonl => {
                let line = JsonSentence {
                    id: &s.id,
                    line: s.line,
                    words: &s.words,
                    pos: &s.pos,
                    entities: entities_of(&s.words, &tags, &probs),
                    tags,
                    probs,
                    gold: s.gold.as_deref(),
                };
                writeln!(out, "{}", serde_json::to_string(&line)?)?;
            }
        }
    }
    Ok(())
}

/// Writes a float32 `.npy` array of shape (rows, cols), row-major.
pub fn write_npy(
    out: &mut dyn Write,
    data: &[f32],
    rows: usize,
    cols: usize,
) -> anyhow::Result<()> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces to a multiple of 64,
    // ending in a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.div_ceil(64) * 64 - unpadded));
    header.push('\n');
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    for v in data {
        out.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}
