//! Word-level predictions from sub-word rows: the label of each word is read at its first sub-word,
//! in the window that owns the word (so words repeated in overlapping windows count once).

use std::ops::Range;

use candle_core::Device;

use crate::error::Result;
use crate::model::{BertNerPos, Inputs};

/// One row (window) of sub-words, as a dataset or a tokenized input holds it.
pub struct RowView<'a> {
    pub input_ids: &'a [u32],
    pub pos_ids: &'a [u32],
    /// Sentence-level word index of each sub-word, -1 for special tokens.
    pub word_ids: &'a [i32],
    /// The words whose labels this row carries.
    pub owned: Range<u32>,
}

/// The prediction for one word.
#[derive(Debug, Clone, PartialEq)]
pub struct WordPrediction {
    /// Sentence-level word index.
    pub word: u32,
    pub label: u32,
    /// Softmax probability of `label`.
    pub prob: f32,
    /// The first sub-word's logits, when asked for.
    pub logits: Option<Vec<f32>>,
}

/// Runs the model (evaluation mode) on `rows`, padded to their longest, and returns the owned words'
/// predictions of each row, in word order.
pub fn predict_rows(
    model: &BertNerPos,
    rows: &[RowView],
    pad_id: u32,
    pos_pad_id: u32,
    keep_logits: bool,
    device: &Device,
) -> Result<Vec<Vec<WordPrediction>>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let len = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0);
    let pairs: Vec<(&[u32], &[u32])> = rows.iter().map(|r| (r.input_ids, r.pos_ids)).collect();
    let inputs = Inputs::from_rows(&pairs, len, pad_id, pos_pad_id, device)?;
    let logits = model
        .eval_logits(&inputs)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f32>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        let mut words = Vec::new();
        for (p, &w) in row.word_ids.iter().enumerate() {
            let first = p == 0 || row.word_ids[p - 1] != w;
            if w < 0 || !first || !row.owned.contains(&(w as u32)) {
                continue;
            }
            let z = &logits[r * len + p];
            let (label, &max) = z
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .expect("at least one label");
            let sum: f32 = z.iter().map(|v| (v - max).exp()).sum();
            words.push(WordPrediction {
                word: w as u32,
                label: label as u32,
                prob: 1.0 / sum,
                logits: keep_logits.then(|| z.clone()),
            });
        }
        out.push(words);
    }
    Ok(out)
}
