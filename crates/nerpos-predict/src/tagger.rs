//! A fine-tuned model with its tokenizer: sentences in, a prediction for every word out.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{DType, Device};
use nerpos_model::{
    BertNerPos, NerposMeta, PackedBf16, PosSource, PredictOptions, RowView, WordPrediction,
};
use nerpos_model::{predict_rows, profile::scope};
use nerpos_prep::SubwordTokenizer;
use nerpos_prep::align::{Aligner, SentenceInput};
use nerpos_prep::manifest::LabelSubwords;

use crate::input::Sentence;

/// How sentences are tagged.
#[derive(Debug, Clone, Copy)]
pub struct TagOptions {
    /// Rows per packed batch.
    pub batch_size: usize,
    /// Words of context repeated between the windows of sentences longer than the model's max length.
    pub overlap: usize,
    pub keep_logits: bool,
    /// The input's POS tags, or the model's POS tagger's.
    pub pos: PosSource,
}

/// The precision the model runs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    #[default]
    F32,
    /// Matrix products in bf16 with f32 sums. On a GPU, weights and activations in bf16 (the fused
    /// kernels sum in f32). On a CPU with AVX512-BF16, the encoder's linear layers multiply bf16
    /// inputs (`vdpbf16ps`) and everything else stays f32, as PyTorch's CPU autocast; that CPU's bf16
    /// dot product peaks at 0.6× its f32 FMA, so f32 stays the fast CPU path (docs/benchmarks.md).
    /// On other CPUs, candle's tensor ops in bf16 (slow; to measure bf16's effect on F1).
    Bf16,
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
    pub fn load(dir: &Path, device: &Device, precision: Precision) -> anyhow::Result<Tagger> {
        let (model, meta) = BertNerPos::load(dir, device)?;
        // On a GPU the fused kernels (what training runs); on the CPU its own kernels.
        let model = model.with_kernels(nerpos_model::Kernels::with_gpu(device.is_cuda()));
        let model = match precision {
            Precision::F32 => model,
            Precision::Bf16 if device.is_cpu() && PackedBf16::supported() => {
                tracing::info!(
                    "--precision bf16 on the CPU: the encoder's products in bf16 (AVX512-BF16), the \
                     rest in f32; f32 is faster on CPUs whose bf16 dot product is slower than their \
                     f32 FMA (docs/benchmarks.md)"
                );
                model.with_bf16_products()?
            }
            Precision::Bf16 => {
                if device.is_cpu() {
                    tracing::warn!(
                        "--precision bf16 on a CPU without AVX512-BF16 runs candle's bf16 tensor ops, \
                         far slower than f32: it measures bf16's effect on F1, f32 is the fast CPU path"
                    );
                }
                let half = BertNerPos::with_dtype(model.config.clone(), device, DType::BF16)?
                    .with_kernels(model.kernels);
                half.copy_from(&model)?;
                half
            }
        };
        let tokenizer = SubwordTokenizer::load(dir)?;
        if let Some(expected) = &meta.tokenizer_fingerprint
            && *expected != tokenizer.fingerprint
        {
            bail!(
                "{}: the tokenizer files ({}) are not the ones the model was trained with ({expected})",
                dir.display(),
                tokenizer.fingerprint
            );
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

    /// The POS tag of a POS id as the input would write it (without the word shape a crossed
    /// vocabulary adds).
    pub fn pos_name(&self, id: u32) -> &str {
        let name = self
            .meta
            .pos
            .get(id as usize)
            .map_or("<unk>", String::as_str);
        if self.meta.pos_shape {
            name.split('|').next().unwrap_or(name)
        } else {
            name
        }
    }

    /// Predictions for every word of every sentence, in order. Rows are tagged in batches of similar
    /// length (little padding work), the results put back in input order.
    pub fn tag(
        &self,
        sentences: &[Sentence],
        opts: TagOptions,
    ) -> anyhow::Result<Vec<Vec<WordPrediction>>> {
        let rows = self.rows(sentences, opts.overlap)?;
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&k| rows[k].input_ids.len());
        let mut out: Vec<Vec<Option<WordPrediction>>> = sentences
            .iter()
            .map(|s| vec![None; s.words.len()])
            .collect();
        let predict = PredictOptions {
            keep_logits: opts.keep_logits,
            pos: opts.pos,
        };
        for batch in order.chunks(opts.batch_size.max(1)) {
            let views: Vec<RowView> = batch.iter().map(|&k| rows[k].view()).collect();
            let preds = predict_rows(&self.model, &views, predict, &self.device)?;
            for (&k, words) in batch.iter().zip(preds) {
                let s = rows[k].sentence;
                for p in words {
                    let slot = p.word as usize;
                    out[s][slot] = Some(p);
                }
            }
        }
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

    /// Each sentence's rows (windows of at most the model's length), with the sentence's index.
    fn rows(&self, sentences: &[Sentence], overlap: usize) -> anyhow::Result<Vec<Window>> {
        let _t = scope("tokenize");
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
            rows.extend(aligner.rows(&input).0.into_iter().map(|r| Window {
                sentence: i,
                owned: r.label_start..r.label_end,
                input_ids: r.input_ids,
                pos_ids: r.pos_ids,
                word_ids: r.word_ids,
            }));
        }
        Ok(rows)
    }
}

/// A window of a sentence, aligned: what one row of a batch is.
struct Window {
    sentence: usize,
    input_ids: Vec<u32>,
    pos_ids: Vec<u32>,
    word_ids: Vec<i32>,
    owned: std::ops::Range<u32>,
}

impl Window {
    fn view(&self) -> RowView<'_> {
        RowView {
            input_ids: &self.input_ids,
            pos_ids: &self.pos_ids,
            word_ids: &self.word_ids,
            owned: self.owned.clone(),
        }
    }
}
