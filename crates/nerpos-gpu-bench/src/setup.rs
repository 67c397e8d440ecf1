//! What every measurement shares: the model shapes (random weights, as Hugging Face initialises a
//! fresh BERT), the corpus and its batches (cut by the trainer's own planner), the trainer's settings
//! (from a `TrainConfig`, so the bench runs what `nerpos-train` runs) and the device.

use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use clap::ValueEnum;
use nerpos_model::{BertNerPos, HeadConfig, ModelConfig, PackedBatch};
use nerpos_prep::{Columns, Dataset, Part, Row, Split};
use nerpos_train::TrainConfig;
use nerpos_train::config::Precision;
use nerpos_train::data::{Batching, pack_batch, plan_epoch};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
pub enum ModelShape {
    /// 6 layers, hidden 384, 12 heads (all-MiniLM-L6-v2)
    Minilm,
    /// 12 layers, hidden 768, 12 heads (bert-base)
    Base,
}

/// A model of `shape` for `num_labels` and `num_pos`, with the checkpoints' dropout (0.1 in the
/// encoder, the head's 0.2) or none.
pub fn shape_config(
    shape: ModelShape,
    num_labels: usize,
    num_pos: usize,
    dropout: bool,
) -> anyhow::Result<ModelConfig> {
    let (hidden, layers, inter) = match shape {
        ModelShape::Minilm => (384, 6, 1536),
        ModelShape::Base => (768, 12, 3072),
    };
    let p = if dropout { 0.1 } else { 0.0 };
    let bert = serde_json::from_value(json!({
        "vocab_size": 30522, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": 12, "intermediate_size": inter, "hidden_act": "gelu",
        "hidden_dropout_prob": p, "attention_probs_dropout_prob": p, "max_position_embeddings": 512,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
    }))?;
    Ok(ModelConfig {
        bert,
        head: HeadConfig {
            num_labels,
            num_pos,
            pos_dim: hidden,
            use_pos: true,
            dropout: if dropout { 0.2 } else { 0.0 },
            kind: nerpos_model::HeadKind::Softmax,
            labels: Vec::new(),
            pos_tagger: None,
            pos_from_tagger: false,
            pos_tagger_layer: None,
            tagger_pos_share: 0.0,
        },
    })
}

/// Hugging Face's initialisation of a fresh BERT: weights ~ N(0, 0.02), LayerNorm γ = 1, biases 0.
pub fn random_init(model: &BertNerPos, seed: u64) -> anyhow::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0f32, 0.02)?;
    for (name, var) in model.params.iter() {
        let n = var.elem_count();
        let data: Vec<f32> = if name.contains("LayerNorm.weight") {
            vec![1.0; n]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            (0..n)
                .map(|_| rand_distr::Distribution::sample(&normal, &mut rng))
                .collect()
        };
        var.set(&Tensor::from_vec(data, var.shape(), &Device::Cpu)?.to_device(var.device())?)?;
    }
    Ok(())
}

/// A prepared dataset's training rows and vocabulary sizes.
pub struct Corpus {
    pub rows: Vec<Row>,
    pub num_labels: usize,
    pub num_pos: usize,
    pub pad_id: u32,
    pub pos_pad: u32,
}

impl Corpus {
    pub fn read(dir: &Path) -> anyhow::Result<Corpus> {
        let ds =
            Dataset::open(dir).with_context(|| format!("opening dataset {}", dir.display()))?;
        let rows = ds.read_all(Split::Train, Part::WHOLE, Columns::Model)?;
        if rows.is_empty() {
            bail!("{}: the training split is empty", dir.display());
        }
        let m = &ds.manifest;
        Ok(Corpus {
            rows,
            num_labels: m.labels.len(),
            num_pos: m.pos.len(),
            pad_id: m.tokenizer.pad_token_id,
            pos_pad: m.pos_pad_id,
        })
    }

    /// `count` optimiser batches of `rows` sentences (or of sentences filling `tokens` real tokens),
    /// as the trainer's planner cuts them (one process, seeded; `grouped`: its length grouping),
    /// epoch after epoch.
    pub fn batches(
        &self,
        rows: usize,
        tokens: Option<usize>,
        count: usize,
        grouped: bool,
        seed: u64,
    ) -> Vec<PackedBatch> {
        let b = Batching {
            world: 1,
            step_rows: if tokens.is_some() {
                self.rows.len()
            } else {
                rows
            },
            step_tokens: tokens.unwrap_or(0),
            grad_accum: 1,
            length_grouping: grouped,
            seed,
        };
        let lengths: Vec<usize> = self.rows.iter().map(|r| r.input_ids.len()).collect();
        let mut out = Vec::with_capacity(count);
        for epoch in 0.. {
            for step in plan_epoch(&lengths, &b, epoch) {
                if out.len() == count {
                    return out;
                }
                out.push(pack_batch(&self.rows, &step.micro[0][0], None));
            }
        }
        out
    }
}

/// The trainer's configuration for a bench run: its defaults, at `precision`, with or without the
/// fused kernels and the fused AdamW. `NERPOS_BENCH_DEVICE=cpu` runs the suite's code paths on the CPU
/// (to test the suite itself without a GPU).
pub fn train_config(
    data: &Path,
    precision: Precision,
    gpu_kernels: bool,
    fused_adamw: bool,
) -> anyhow::Result<TrainConfig> {
    let device = if std::env::var("NERPOS_BENCH_DEVICE").is_ok_and(|v| v == "cpu") {
        "cpu"
    } else {
        "cuda"
    };
    let precision = serde_json::to_value(precision)?;
    let sets = [
        format!("data={:?}", data.display().to_string()),
        "model=\"random\"".into(),
        "out=\"nowhere\"".into(),
        format!("device={device:?}"),
        format!("precision={precision}"),
        format!("gpu_kernels={gpu_kernels}"),
        format!("fused_adamw={fused_adamw}"),
        "seed=1234".into(),
    ];
    Ok(TrainConfig::load(None, &sets)?)
}

/// The device a bench configuration runs on (opened and tuned as the trainer opens it).
pub fn device(cfg: &TrainConfig) -> anyhow::Result<Device> {
    nerpos_train::device(cfg, 0)
        .context("opening GPU 0 (is this a CUDA build? see launch/build-cuda.sh)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use nerpos_kernels::launch::Elem;
    use nerpos_kernels::ops::multi_tensor::optimiser_launches;

    /// The fused kernels one optimiser step launches (gradient norm and AdamW, every parameter) are
    /// the same three for MiniLM (22.6 M parameters in 104 tensors) and BERT-base (109 M in 200):
    /// planned and checked against the launch limits as on a GPU.
    #[test]
    fn optimiser_launches_do_not_grow_with_the_model() {
        let mut counts = Vec::new();
        for shape in [ModelShape::Minilm, ModelShape::Base] {
            let config = shape_config(shape, 17, 42, true).unwrap();
            let model = BertNerPos::new(config, &candle_core::Device::Cpu).unwrap();
            let sizes: Vec<usize> = model.params.iter().map(|(_, v)| v.elem_count()).collect();
            for elem in [Elem::F32, Elem::Bf16] {
                let launched = optimiser_launches(&sizes, elem).unwrap();
                eprintln!(
                    "{shape:?}, {} tensors, {} parameters, {elem:?} gradients: {} launches ({})",
                    sizes.len(),
                    sizes.iter().sum::<usize>(),
                    launched.len(),
                    launched.join(", ")
                );
                counts.push(launched.len());
            }
        }
        assert!(counts.iter().all(|&n| n == 3), "{counts:?}");
    }
}
