//! Word-level predictions from sub-word rows: the label of each word is read at its first sub-word,
//! in the window that owns the word (so words repeated in overlapping windows count once).

use std::ops::Range;

use candle_core::Device;

use crate::batch::PackedBatch;
use crate::error::Result;
use crate::model::{BertNerPos, PosSource};

/// One row (window) of sub-words, as a dataset or a tokenized input holds it.
pub struct RowView<'a> {
    pub input_ids: &'a [u32],
    pub pos_ids: &'a [u32],
    /// Sentence-level word index of each sub-word, -1 for special tokens.
    pub word_ids: &'a [i32],
    /// The words whose labels this row carries.
    pub owned: Range<u32>,
}

impl<'a, S> From<&'a nerpos_prep::Row<S>> for RowView<'a> {
    /// A prepared dataset's row.
    fn from(r: &'a nerpos_prep::Row<S>) -> RowView<'a> {
        RowView {
            input_ids: &r.input_ids,
            pos_ids: &r.pos_ids,
            word_ids: &r.word_ids,
            owned: r.label_start..r.label_end,
        }
    }
}

/// The prediction for one word.
#[derive(Debug, Clone, PartialEq)]
pub struct WordPrediction {
    /// Sentence-level word index.
    pub word: u32,
    pub label: u32,
    /// The probability of `label`: its softmax probability, or with a CRF head its marginal
    /// probability at this word (forward–backward over the row).
    pub prob: f32,
    /// The first sub-word's logits, when asked for.
    pub logits: Option<Vec<f32>>,
    /// The POS tagger's most likely POS id (a model with a POS tagger).
    pub pos: Option<u32>,
}

impl RowView<'_> {
    /// Positions (within the row) of the first sub-word of each word the row owns, with the word.
    fn first_subwords(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.word_ids.iter().enumerate().filter_map(|(p, &w)| {
            let first = p == 0 || self.word_ids[p - 1] != w;
            (w >= 0 && first && self.owned.contains(&(w as u32))).then_some((p, w as u32))
        })
    }
}

/// What a prediction returns and reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct PredictOptions {
    /// Keep each word's logits.
    pub keep_logits: bool,
    /// The rows' POS ids, or the model's POS tagger's (input without POS tags).
    pub pos: PosSource,
}

/// Runs the model (evaluation mode) on `rows`, packed (no padding; the head runs only on each owned
/// word's first sub-word), and returns the owned words' predictions of each row, in word order.
pub fn predict_rows(
    model: &BertNerPos,
    rows: &[RowView],
    opts: PredictOptions,
    device: &Device,
) -> Result<Vec<Vec<WordPrediction>>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut batch = PackedBatch::new();
    let mut words: Vec<Vec<u32>> = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        let firsts: Vec<(usize, u32)> = row.first_subwords().collect();
        // No dropout in prediction: the sentence's identity is only its place.
        batch.push_row(
            r as u64,
            row.input_ids,
            row.pos_ids,
            firsts.iter().map(|&(p, _)| (p, None)),
        );
        words.push(firsts.into_iter().map(|(_, w)| w).collect());
    }
    if batch.head.is_empty() {
        // Nothing to predict (rows of empty sentences).
        return Ok(words.iter().map(|_| Vec::new()).collect());
    }
    let (inputs, _) = batch.to_device(device)?;
    let out = model.eval(&inputs, opts.pos)?;
    let logits = to_host_f32(&out.logits)?.to_vec2::<f32>()?;
    let pos: Option<Vec<u32>> = out
        .pos_logits
        .map(|z| Ok::<_, crate::error::ModelError>(to_host_f32(&z.argmax(1)?)?.to_vec1::<u32>()?))
        .transpose()?;
    let decoding = model.decoding()?;
    let mut at = logits.into_iter();
    let mut pos_at = pos.into_iter().flatten();
    Ok(words
        .into_iter()
        .map(|ws| {
            let z: Vec<Vec<f32>> = at.by_ref().take(ws.len()).collect();
            let mut preds = decoding.decode(ws, z, opts.keep_logits);
            for p in &mut preds {
                p.pos = pos_at.next();
            }
            preds
        })
        .collect())
}

/// `t` on the host, floats as f32 (ids stay u32).
fn to_host_f32(t: &candle_core::Tensor) -> Result<candle_core::Tensor> {
    let t = match t.dtype() {
        candle_core::DType::BF16 | candle_core::DType::F16 => {
            t.to_dtype(candle_core::DType::F32)?
        }
        _ => t.clone(),
    };
    Ok(nerpos_kernels::stats::to_host(&t)?)
}
