//! The tagging head: the encoder's output at the head positions, concatenated with the POS embedding
//! of the word there, dropout, and a linear layer to the labels.

use candle_core::Tensor;
use nerpos_kernels::Mask;
use nerpos_kernels::dropout::{Rows, Site};
use nerpos_kernels::ops::column_sum::ColumnSum;
use nerpos_kernels::ops::embedding::EmbeddingGrad;
use nerpos_kernels::ops::residual::masked;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use serde::{Deserialize, Serialize};

use super::crf::{Allowed, Crf};
use super::{Linear, Pass, Sink};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::params::{Param, Params, Role};
use crate::profile::scope;

/// Names of the head's parameters.
pub const POS_EMBEDDING: &str = "pos_embedding.weight";
pub const CLASSIFIER_WEIGHT: &str = "classifier.weight";
pub const CLASSIFIER_BIAS: &str = "classifier.bias";

pub struct Head {
    /// The POS embedding (absent in the no-POS model).
    pub pos: Option<Param>,
    pub classifier: Linear,
    /// The CRF over the logits (`head = "crf"`).
    pub crf: Option<Crf>,
    hidden: usize,
    dropout: f64,
}

/// What the head's backward needs.
pub struct HeadCache {
    features: Tensor,
    mask: Option<Mask>,
}

impl Head {
    pub fn new(p: &mut Params, c: &ModelConfig) -> Result<Head> {
        let h = &c.head;
        let pos = h
            .use_pos
            .then(|| {
                p.add(
                    POS_EMBEDDING.into(),
                    (h.num_pos, h.pos_dim),
                    Role::TABLE.in_head(),
                )
            })
            .transpose()?;
        let dims = (c.head_features(), h.num_labels);
        let classifier = Linear::new(p, "classifier", dims, Role::WEIGHT.in_head())?;
        let crf = h
            .crf
            .as_ref()
            .map(|labels| Crf::new(p, h.num_labels, Allowed::iob2(labels)))
            .transpose()?;
        Ok(Head {
            pos,
            classifier,
            crf,
            hidden: c.bert.hidden_size,
            dropout: h.dropout,
        })
    }

    /// Logits `[M, labels]` from the encoder's output at the head positions `[M, H]`.
    pub fn forward(&self, pass: &Pass, at_head: Tensor) -> Result<(Tensor, HeadCache)> {
        let _t = scope("fwd/bwd: head");
        let features = match &self.pos {
            Some(e) => {
                let pos = e.t().index_select(&pass.inputs.head_pos_ids, 0)?;
                Tensor::cat(&[&at_head, &pos], 1)?
            }
            None => at_head,
        };
        let mask = pass.mask(&features, Rows::Head, Site::Head, self.dropout)?;
        let features = masked(&features, mask.as_ref())?;
        let logits = features
            .matmul(&self.classifier.weight.t().t()?)?
            .broadcast_add(&self.classifier.bias.t())?;
        Ok((logits, HeadCache { features, mask }))
    }

    /// Hands over the head's gradients; returns d(encoder output) at the head positions `[M, H]`.
    pub fn backward(
        &self,
        pass: &Pass,
        c: HeadCache,
        dlogits: &Tensor,
        sink: &mut Sink,
    ) -> Result<Tensor> {
        let _t = scope("fwd/bwd: head");
        let k = pass.kernels;
        let w = &self.classifier.weight;
        sink.dense(w, dlogits.t()?.matmul(&c.features)?)?;
        sink.dense(&self.classifier.bias, ColumnSum::forward(k, dlogits)?)?;
        let dfeat = masked(&dlogits.matmul(&w.t())?, c.mask.as_ref())?;
        if let Some(e) = &self.pos {
            let (rows, dim) = e.tensor.dims2()?;
            let dpos = dfeat.narrow(1, self.hidden, dim)?.contiguous()?;
            let ids = &pass.inputs.host.head_pos_ids;
            sink.dense(e, EmbeddingGrad::dense(k, ids, &dpos, rows)?)?;
        }
        Ok(dfeat.narrow(1, 0, self.hidden)?.contiguous()?)
    }

    /// Its parameters in the order backward hands out their gradients.
    pub fn params(&self) -> Vec<&Param> {
        let mut out = self.crf.as_ref().map(Crf::params).unwrap_or_default();
        out.extend([&self.classifier.weight, &self.classifier.bias]);
        out.extend(&self.pos);
        out
    }

    /// Draws the head's parameters (in `params`) from `seed` as `init` says — the same on every
    /// process, since every process draws from the same seed. `initializer_range` is the checkpoint's
    /// (for [`HeadInit::Bert`]).
    pub fn init(
        &self,
        params: &Params,
        init: HeadInit,
        seed: u64,
        initializer_range: f64,
    ) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let std = initializer_range as f32;
        // nn.Linear's weight (Kaiming-uniform with a = √5) and bias both reduce to U(−1/√fan_in, 1/√fan_in).
        let (_, fan_in) = self.classifier.weight.tensor.dims2()?;
        let bound = 1.0 / (fan_in as f32).sqrt();
        let [pos, weight, bias] = match init {
            HeadInit::Torch => [
                Draw::Normal(1.0),
                Draw::Uniform(bound),
                Draw::Uniform(bound),
            ],
            HeadInit::Bert => [Draw::Normal(std), Draw::Normal(std), Draw::Zero],
        };
        // The draws' order (POS embedding, weight, bias, then the CRF's as pytorch-crf draws them:
        // U(−0.1, 0.1)) is part of what a seed gives.
        let crf = self.crf.as_ref();
        let draws = [
            (self.pos.as_ref(), pos),
            (Some(&self.classifier.weight), weight),
            (Some(&self.classifier.bias), bias),
            (crf.map(|c| &c.start), Draw::Uniform(0.1)),
            (crf.map(|c| &c.end), Draw::Uniform(0.1)),
            (crf.map(|c| &c.transitions), Draw::Uniform(0.1)),
        ];
        for (param, draw) in draws {
            let Some(var) = param.and_then(|p| params.get(&p.name)) else {
                continue;
            };
            let data = draw.sample(var.elem_count(), &mut rng)?;
            let value = Tensor::from_vec(data, var.shape(), var.device())?;
            var.set(&value.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

/// How a new head's parameters are drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadInit {
    /// As the design's PyTorch module draws it: `nn.Embedding` for POS (N(0, 1)) and `nn.Linear` for
    /// the classifier (weight and bias U(−1/√fan_in, 1/√fan_in)). At this scale the POS vectors are
    /// as large as the encoder's outputs they are concatenated with, and the model uses them.
    #[default]
    Torch,
    /// As Hugging Face initialises new modules: weights N(0, initializer_range), bias 0. POS vectors
    /// ~50× smaller than the encoder's outputs: the model learns little from POS (docs/results.md).
    Bert,
}

/// One parameter's distribution.
#[derive(Clone, Copy)]
enum Draw {
    Normal(f32),
    Uniform(f32),
    Zero,
}

impl Draw {
    fn sample(self, n: usize, rng: &mut ChaCha8Rng) -> Result<Vec<f32>> {
        Ok(match self {
            Draw::Normal(std) => {
                let d = Normal::new(0f32, std).map_err(|e| ModelError::Internal(e.to_string()))?;
                (0..n).map(|_| d.sample(rng)).collect()
            }
            Draw::Uniform(bound) => {
                let d = Uniform::new_inclusive(-bound, bound)
                    .map_err(|e| ModelError::Internal(e.to_string()))?;
                (0..n).map(|_| d.sample(rng)).collect()
            }
            Draw::Zero => vec![0.0; n],
        })
    }
}
