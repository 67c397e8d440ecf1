//! `BertNerPos`: BERT encoder → contextual embeddings (B,T,H); POS ids → dense embedding (B,T,P);
//! concatenate → dropout → linear to the NER labels.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::bert::{BertEncoder, concat_features};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layers::{Mode, dropout, log_softmax};
use crate::params::Params;

/// Names of the new head's parameters.
pub const POS_EMBEDDING: &str = "pos_embedding.weight";
pub const CLASSIFIER_WEIGHT: &str = "classifier.weight";
pub const CLASSIFIER_BIAS: &str = "classifier.bias";

pub struct BertNerPos {
    pub config: ModelConfig,
    pub params: Params,
    pub(crate) encoder: BertEncoder,
    pub(crate) pos_embedding: Option<Embedding>,
    pub(crate) classifier: Linear,
}

/// A batch's token-level inputs, on the model's device.
pub struct Inputs {
    /// (B, T) u32 sub-word ids.
    pub input_ids: Tensor,
    /// (B, T) 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// (B, T) u32 POS ids (ignored by a model without POS).
    pub pos_ids: Tensor,
}

impl Inputs {
    /// Builds the tensors of a batch of rows padded to `len` (`pad_id` for ids, the POS pad id for POS).
    pub fn from_rows(
        rows: &[(&[u32], &[u32])],
        len: usize,
        pad_id: u32,
        pos_pad: u32,
        device: &Device,
    ) -> Result<Inputs> {
        let b = rows.len();
        let mut ids = vec![pad_id; b * len];
        let mut mask = vec![0u8; b * len];
        let mut pos = vec![pos_pad; b * len];
        for (r, (row_ids, row_pos)) in rows.iter().enumerate() {
            let n = row_ids.len().min(len);
            ids[r * len..r * len + n].copy_from_slice(&row_ids[..n]);
            mask[r * len..r * len + n].iter_mut().for_each(|m| *m = 1);
            pos[r * len..r * len + n].copy_from_slice(&row_pos[..n]);
        }
        Ok(Inputs {
            input_ids: Tensor::from_vec(ids, (b, len), device)?,
            attention_mask: Tensor::from_vec(mask, (b, len), device)?,
            pos_ids: Tensor::from_vec(pos, (b, len), device)?,
        })
    }
}

/// The labelled positions of a batch, for the loss: flat indices into (B·T) and their labels.
pub struct Targets {
    pub positions: Tensor,
    pub labels: Tensor,
    pub count: usize,
}

impl Targets {
    /// From per-position labels of a (B, T) batch flattened row-major, -100 meaning "no label".
    pub fn from_labels(labels: &[i32], device: &Device) -> Result<Targets> {
        let (positions, labels): (Vec<u32>, Vec<u32>) = labels
            .iter()
            .enumerate()
            .filter(|(_, l)| **l >= 0)
            .map(|(i, &l)| (i as u32, l as u32))
            .unzip();
        let count = positions.len();
        Ok(Targets {
            positions: Tensor::from_vec(positions, count, device)?,
            labels: Tensor::from_vec(labels, count, device)?,
            count,
        })
    }
}

impl BertNerPos {
    /// The model with every parameter zero (to be loaded or initialised).
    pub fn new(config: ModelConfig, device: &Device) -> Result<BertNerPos> {
        BertNerPos::with_dtype(config, device, DType::F32)
    }

    /// The model with every parameter zero, stored in `dtype`: a bf16 compute copy for mixed
    /// precision, refreshed from the f32 master with [`copy_from`](Self::copy_from) before each step.
    pub fn with_dtype(config: ModelConfig, device: &Device, dtype: DType) -> Result<BertNerPos> {
        let mut params = Params::with_dtype(device, dtype);
        let encoder = BertEncoder::new(&mut params, &config.bert)?;
        let h = &config.head;
        let pos_embedding = if h.use_pos {
            Some(Embedding::new(
                params.var(POS_EMBEDDING, (h.num_pos, h.pos_dim))?,
                h.pos_dim,
            ))
        } else {
            None
        };
        let features = config.bert.hidden_size + if h.use_pos { h.pos_dim } else { 0 };
        let classifier = Linear::new(
            params.var(CLASSIFIER_WEIGHT, (h.num_labels, features))?,
            Some(params.var(CLASSIFIER_BIAS, h.num_labels)?),
        );
        Ok(BertNerPos {
            config,
            params,
            encoder,
            pos_embedding,
            classifier,
        })
    }

    pub fn device(&self) -> &Device {
        self.params.device()
    }

    pub fn dtype(&self) -> DType {
        self.params.dtype()
    }

    /// Sets every parameter to `master`'s value, cast to this model's dtype.
    pub fn copy_from(&self, master: &BertNerPos) -> Result<()> {
        for (name, var) in self.params.iter() {
            let Some(src) = master.params.get(name) else {
                return Err(ModelError::Config(format!(
                    "copy_from: the source model has no {name}"
                )));
            };
            var.set(&src.as_tensor().to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// Initialises the head as Hugging Face initialises new modules: weights ~ N(0, initializer_range),
    /// biases 0, from `seed` (so that every process starts from the same head).
    pub fn init_head(&self, seed: u64) -> Result<()> {
        let std = self.config.bert.initializer_range;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal =
            Normal::new(0f32, std as f32).map_err(|e| ModelError::Config(e.to_string()))?;
        for name in [POS_EMBEDDING, CLASSIFIER_WEIGHT] {
            let Some(var) = self.params.get(name) else {
                continue;
            };
            let data: Vec<f32> = (0..var.elem_count())
                .map(|_| normal.sample(&mut rng))
                .collect();
            var.set(&Tensor::from_vec(data, var.shape(), var.device())?)?;
        }
        let bias = self
            .params
            .get(CLASSIFIER_BIAS)
            .expect("the classifier has a bias");
        bias.set(&bias.zeros_like()?)?;
        Ok(())
    }

    /// Logits (B, T, labels).
    pub fn forward(&self, inputs: &Inputs, mode: &mut Mode) -> Result<Tensor> {
        let encoded = self
            .encoder
            .forward(&inputs.input_ids, &inputs.attention_mask, mode)?;
        let pos = match &self.pos_embedding {
            Some(e) => Some(e.forward(&inputs.pos_ids)?),
            None => None,
        };
        let features = concat_features(&encoded, pos.as_ref())?;
        let features = dropout(&features, self.config.head.dropout, mode)?;
        Ok(self.classifier.forward(&features)?)
    }

    /// Cross-entropy summed over the labelled positions (the caller normalises, e.g. by a count summed
    /// over processes), and that count.
    pub fn loss(logits: &Tensor, targets: &Targets) -> Result<(Tensor, usize)> {
        let c = logits.dim(D::Minus1)?;
        if targets.count == 0 {
            return Ok((Tensor::zeros((), DType::F32, logits.device())?, 0));
        }
        let rows = logits
            .reshape(((), c))?
            .index_select(&targets.positions, 0)?;
        let logp = log_softmax(&rows.to_dtype(DType::F32)?)?;
        let picked = logp.gather(&targets.labels.unsqueeze(1)?, 1)?;
        Ok((picked.sum_all()?.neg()?, targets.count))
    }

    /// The predicted label of every position of (B, T) logits.
    pub fn predict(logits: &Tensor) -> Result<Vec<Vec<u32>>> {
        Ok(logits.argmax(D::Minus1)?.to_vec2::<u32>()?)
    }
}
