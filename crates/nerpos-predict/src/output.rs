//! What `nerpos-predict` writes: CoNLL or JSON Lines (entities with character offsets, as Hugging
//! Face's token-classification pipeline gives them), `.npy` logits, and the seqeval report when the
//! input has gold tags.

use std::io::Write;

use nerpos_model::WordPrediction;
use serde::Serialize;

use crate::input::Sentence;

/// An entity in JSON Lines output: the fields of Hugging Face's pipeline with an
/// `aggregation_strategy` (`entity_group` is `type`), plus its words.
#[derive(Debug, Serialize)]
pub struct Entity {
    #[serde(rename = "type")]
    pub ty: String,
    /// Characters `[start, end)` of the sentence's `text` (the input line for raw text), counted as
    /// Python counts a `str`'s characters.
    pub start: usize,
    pub end: usize,
    /// Words `[word_start, word_end)` of the sentence.
    pub word_start: usize,
    pub word_end: usize,
    /// The entity as it appears in the input: `text[start..end]`.
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
    text: &'a str,
    words: &'a [String],
    /// Each word's character span `[start, end)` in `text`.
    spans: Vec<[usize; 2]>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pos: &'a [String],
    tags: Vec<&'a str>,
    probs: Vec<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gold: Option<&'a [String]>,
    entities: Vec<Entity>,
}

/// The entities of a tagged sentence (seqeval's default rules, as nerpos-eval reads them).
pub fn entities_of(s: &Sentence, tags: &[&str], probs: &[f32]) -> Vec<Entity> {
    nerpos_eval::entities(tags)
        .into_iter()
        .map(|(ty, a, b)| {
            let (start, end) = (s.spans[a].start, s.spans[b].end);
            Entity {
                ty,
                start,
                end,
                word_start: a,
                word_end: b + 1,
                text: s.text.chars().skip(start).take(end - start).collect(),
                score: probs[a..=b].iter().sum::<f32>() / (b + 1 - a) as f32,
            }
        })
        .collect()
}

/// The seqeval report (default mode) of tagged sentences against their gold tags, built up chunk by
/// chunk.
pub struct Scoring {
    scorer: nerpos_eval::Scorer,
    /// Whether every sentence so far had gold tags.
    pub complete: bool,
}

impl Scoring {
    pub fn new(labels: &[String]) -> anyhow::Result<Scoring> {
        let (scorer, _) = nerpos_eval::Scorer::with_tags(nerpos_eval::Mode::Default, labels)?;
        Ok(Scoring {
            scorer,
            complete: true,
        })
    }

    pub fn add(
        &mut self,
        sentences: &[Sentence],
        preds: &[Vec<WordPrediction>],
        labels: &[String],
    ) -> anyhow::Result<()> {
        for (s, p) in sentences.iter().zip(preds) {
            let Some(gold) = &s.gold else {
                self.complete = false;
                continue;
            };
            let gold: Vec<&str> = gold.iter().map(String::as_str).collect();
            let pred: Vec<&str> = p
                .iter()
                .map(|w| labels[w.label as usize].as_str())
                .collect();
            self.scorer.add(&gold, &pred)?;
        }
        Ok(())
    }

    /// The report, when every sentence had gold tags.
    pub fn report(&self) -> Option<nerpos_eval::Report> {
        self.complete
            .then(|| nerpos_eval::Report::new(&self.scorer.counts()))
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// word, POS, gold tag (when the input has one), predicted tag; a blank line between sentences.
    Conll,
    /// One JSON object per sentence: text, words and their spans, tags, probabilities, entities with
    /// character offsets.
    Jsonl,
}

/// Writes the predictions as CoNLL or JSON Lines (the sentences' `pos`: the input's POS tags, or
/// the model's when it tagged them).
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
                    text: &s.text,
                    words: &s.words,
                    spans: s.spans.iter().map(|r| [r.start, r.end]).collect(),
                    pos: &s.pos,
                    entities: entities_of(s, &tags, &probs),
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
