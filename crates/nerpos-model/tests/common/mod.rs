//! Shared by the parity tests: reading a reference batch and comparing tensors.

#![allow(dead_code)] // each test binary uses part of this module

use std::collections::HashMap;
use std::path::Path;

pub mod oracle;

use candle_core::{DType, Device, Tensor};
use nerpos_model::{BertNerPos, PackedBatch};

pub struct Reference {
    /// The padded batch as PyTorch ran it: ids, attention mask (u8), POS ids, all (B, T).
    pub ids: Tensor,
    pub mask: Tensor,
    pub pos: Tensor,
    /// (B·T) labels, −100 where there is none.
    pub labels: Vec<i32>,
    pub tensors: HashMap<String, Tensor>,
}

pub fn read_reference(path: &Path) -> Reference {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let u32s = |k: &str| tensors[k].to_dtype(DType::U32).unwrap();
    let labels: Vec<i32> = tensors["labels"]
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|l| l as i32)
        .collect();
    Reference {
        ids: u32s("input_ids"),
        mask: tensors["attention_mask"].to_dtype(DType::U8).unwrap(),
        pos: u32s("pos_ids"),
        labels,
        tensors,
    }
}

impl Reference {
    /// (row, length) of each padded row.
    fn lengths(&self) -> Vec<usize> {
        self.mask
            .to_vec2::<u8>()
            .unwrap()
            .iter()
            .map(|r| r.iter().filter(|&&m| m == 1).count())
            .collect()
    }

    /// The batch packed; the head on every real token (`labelled` false) or on the labelled ones,
    /// with their labels.
    pub fn packed(&self, labelled: bool) -> PackedBatch {
        let ids = self.ids.to_vec2::<u32>().unwrap();
        let pos = self.pos.to_vec2::<u32>().unwrap();
        let t = ids[0].len();
        let mut b = PackedBatch::new();
        for (r, len) in self.lengths().into_iter().enumerate() {
            let labels = &self.labels[r * t..r * t + len];
            let head: Vec<(usize, Option<u32>)> = if labelled {
                labels
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| **l >= 0)
                    .map(|(p, &l)| (p, Some(l as u32)))
                    .collect()
            } else {
                (0..len).map(|p| (p, None)).collect()
            };
            b.push_row(r as u64, &ids[r][..len], &pos[r][..len], head);
        }
        b
    }

    /// PyTorch's logits at the real tokens, packed: (N, C).
    pub fn real_logits(&self) -> Tensor {
        self.at_real_tokens(&self.tensors["logits"])
    }

    /// The real tokens' rows of a padded (B, T, C) tensor, packed: (N, C).
    pub fn at_real_tokens(&self, logits: &Tensor) -> Tensor {
        let (_, t, c) = logits.dims3().unwrap();
        let flat = logits.reshape(((), c)).unwrap();
        let idx: Vec<u32> = self
            .lengths()
            .into_iter()
            .enumerate()
            .flat_map(|(r, len)| (0..len).map(move |p| (r * t + p) as u32))
            .collect();
        let n = idx.len();
        flat.index_select(&Tensor::from_vec(idx, n, &Device::Cpu).unwrap(), 0)
            .unwrap()
    }
}

/// max |ours − theirs| / max |theirs|.
pub fn rel_error(ours: &Tensor, theirs: &Tensor) -> f64 {
    let a = ours.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = theirs.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    assert_eq!(a.dims(), b.dims());
    let diff = (a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .max(1e-12);
    diff / scale
}

/// Runs the autograd oracle on the reference batch (dropout off) and compares logits, loss and every
/// gradient with `tolerance`; returns the worst relative errors (logits, loss, gradients).
pub fn compare(model: &BertNerPos, r: &Reference, tolerance: f64) -> (f64, f64, f64) {
    let logits = oracle::logits(model, &r.ids, &r.mask, &r.pos);
    let e_logits = rel_error(&logits, &r.tensors["logits"]);
    let loss = oracle::loss(&logits, &r.labels);
    let count = r.labels.iter().filter(|&&l| l >= 0).count();
    assert_eq!(
        count as f64,
        r.tensors["count"]
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[0]
    );
    let e_loss = rel_error(&loss.reshape(1).unwrap(), &r.tensors["loss_sum"]);
    let grads = loss.backward().unwrap();
    let mut e_grad: f64 = 0.0;
    let mut worst = String::new();
    for (name, var) in model.params.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} received no gradient"));
        let theirs = r
            .tensors
            .get(&format!("grad.{name}"))
            .unwrap_or_else(|| panic!("no reference gradient for {name}"));
        let scale = theirs
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // The attention key bias shifts every score of a query by the same amount, which softmax
        // ignores: its exact gradient is zero, and both sides hold rounding noise (~1e-9).
        let e = if name.ends_with("attention.self.key.bias") {
            assert!(
                scale < 1e-6,
                "{name}: reference gradient {scale} should be ~0"
            );
            let ours = max_abs(g);
            assert!(ours < 1e-6, "{name}: our gradient {ours} should be ~0");
            0.0
        } else {
            let norm = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{name}: zero gradient");
            rel_error(g, theirs)
        };
        if e > e_grad {
            e_grad = e;
            worst = name.to_owned();
        }
    }
    eprintln!(
        "max relative error: logits {e_logits:.2e}, loss {e_loss:.2e}, gradients {e_grad:.2e} ({worst})"
    );
    assert!(e_logits <= tolerance, "logits {e_logits}");
    assert!(e_loss <= tolerance, "loss {e_loss}");
    assert!(e_grad <= tolerance, "gradient of {worst}: {e_grad}");
    (e_logits, e_loss, e_grad)
}

/// The model's own pass on the reference batch packed: logits at every real token, then loss and
/// every gradient (`forward_backward`, head on the labelled tokens) within `tolerance` of the
/// reference; returns the worst gradient error.
pub fn compare_manual(model: &BertNerPos, r: &Reference, tolerance: f64) -> f64 {
    let (inputs, _) = r.packed(false).to_device(&Device::Cpu).unwrap();
    let logits = model.eval_logits(&inputs).unwrap();
    let e_logits = rel_error(&logits, &r.real_logits());
    assert!(e_logits <= tolerance, "eval logits {e_logits}");
    let (inputs, targets) = r.packed(true).to_device(&Device::Cpu).unwrap();
    let out = model
        .forward_backward(&inputs, &targets.unwrap(), None)
        .unwrap();
    let theirs = r.tensors["loss_sum"]
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[0];
    let e_loss = (out.loss_sum - theirs).abs() / theirs.abs();
    assert!(e_loss <= tolerance, "loss {} vs {theirs}", out.loss_sum);
    let mut worst: (f64, String) = (0.0, String::new());
    for (name, g) in &out.grads {
        let g = &g.to_dense().unwrap();
        let reference = &r.tensors[&format!("grad.{name}")];
        let e = if name.ends_with("attention.self.key.bias") {
            // Exactly zero in theory (see `compare`): only check it is negligible.
            let ours = max_abs(g);
            assert!(ours < 1e-6, "{name}: {ours}");
            0.0
        } else {
            rel_error(g, reference)
        };
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    eprintln!(
        "hand-written backward: loss {e_loss:.2e}, gradients {:.2e} ({})",
        worst.0, worst.1
    );
    assert!(worst.0 <= tolerance, "gradient of {}: {}", worst.1, worst.0);
    assert_eq!(out.grads.len(), model.params.len());
    worst.0
}

/// The packed pass against the padded autograd oracle on the same batch and weights (dropout off):
/// logits at every real token and every gradient, worst relative errors (logits, gradients).
pub fn packed_vs_oracle(model: &BertNerPos, r: &Reference) -> (f64, f64) {
    let padded = oracle::logits(model, &r.ids, &r.mask, &r.pos);
    let (inputs, _) = r.packed(false).to_device(&Device::Cpu).unwrap();
    let packed = model.eval_logits(&inputs).unwrap();
    let e_logits = rel_error(&packed, &r.at_real_tokens(&padded));
    let grads = oracle::loss(&padded, &r.labels).backward().unwrap();
    let (inputs, targets) = r.packed(true).to_device(&Device::Cpu).unwrap();
    let out = model
        .forward_backward(&inputs, &targets.unwrap(), None)
        .unwrap();
    let mut e_grad: f64 = 0.0;
    for (name, var) in model.params.iter() {
        let theirs = grads.get(var.as_tensor()).unwrap();
        // The key bias's exact gradient is zero (see `compare`); both sides hold rounding noise.
        if !name.ends_with("attention.self.key.bias") {
            e_grad = e_grad.max(rel_error(&out.grads[name].to_dense().unwrap(), theirs));
        }
    }
    (e_logits, e_grad)
}

/// Each row's logits alone equal its logits packed with the other rows; returns the largest
/// difference.
pub fn composition_difference(model: &BertNerPos, all: &PackedBatch) -> f32 {
    let (inputs, _) = all.to_device(&Device::Cpu).unwrap();
    let together = model
        .eval_logits(&inputs)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut worst = 0f32;
    let mut at = 0;
    for r in 0..all.rows() {
        let (s, e) = (all.cu_seqlens[r] as usize, all.cu_seqlens[r + 1] as usize);
        let mut alone = PackedBatch::new();
        alone.push_row(
            all.sentences[r],
            &all.input_ids[s..e],
            &all.pos_ids[s..e],
            (0..e - s).map(|p| (p, None)),
        );
        let (x, _) = alone.to_device(&Device::Cpu).unwrap();
        let own = model.eval_logits(&x).unwrap().to_vec2::<f32>().unwrap();
        for (a, b) in own.iter().zip(&together[at..at + (e - s)]) {
            for (x, y) in a.iter().zip(b) {
                worst = worst.max((x - y).abs());
            }
        }
        at += e - s;
    }
    worst
}

/// Row `r` of `all` as a batch of its own (same sentence, ids, POS ids, head positions and labels).
pub fn row_alone(all: &PackedBatch, r: usize) -> PackedBatch {
    let (s, e) = (all.cu_seqlens[r] as usize, all.cu_seqlens[r + 1] as usize);
    let head: Vec<(usize, Option<u32>)> = all
        .head
        .iter()
        .enumerate()
        .filter(|&(_, &t)| (s..e).contains(&(t as usize)))
        .map(|(m, &t)| (t as usize - s, all.labels.get(m).copied()))
        .collect();
    let mut b = PackedBatch::new();
    b.push_row(
        all.sentences[r],
        &all.input_ids[s..e],
        &all.pos_ids[s..e],
        head,
    );
    b
}

/// Training with dropout (the model's rates, the masks of `noise`): the loss and every gradient of
/// `all` against the sums over its rows taken alone, and against the rows packed in reverse order.
/// Returns the worst relative difference: ~float rounding when a row's masks depend on its sentence
/// only, far more when they depend on the batch around it.
pub fn dropout_composition_difference(
    model: &BertNerPos,
    all: &PackedBatch,
    noise: nerpos_model::Noise,
) -> f64 {
    let run = |b: &PackedBatch| {
        let (x, y) = b.to_device(&Device::Cpu).unwrap();
        model
            .forward_backward(&x, &y.unwrap(), Some(noise))
            .unwrap()
    };
    let together = run(all);
    let alone: Vec<_> = (0..all.rows()).map(|r| run(&row_alone(all, r))).collect();
    let mut reversed = PackedBatch::new();
    for r in (0..all.rows()).rev() {
        let one = row_alone(all, r);
        let head = one
            .head
            .iter()
            .map(|&t| t as usize)
            .zip(one.labels.iter().map(|&l| Some(l)));
        reversed.push_row(one.sentences[0], &one.input_ids, &one.pos_ids, head);
    }
    let reversed = run(&reversed);
    let loss_alone: f64 = alone.iter().map(|o| o.loss_sum).sum();
    let mut worst = ((together.loss_sum - loss_alone) / together.loss_sum)
        .abs()
        .max(((together.loss_sum - reversed.loss_sum) / together.loss_sum).abs());
    for (name, g) in &together.grads {
        let g = g.to_dense().unwrap();
        let sum = alone
            .iter()
            .map(|o| o.grads[name].to_dense().unwrap())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        // The key bias's exact gradient is zero (see `compare`): rounding noise only.
        if !name.ends_with("attention.self.key.bias") {
            worst = worst.max(rel_error(&g, &sum));
            worst = worst.max(rel_error(&g, &reversed.grads[name].to_dense().unwrap()));
        }
    }
    worst
}

/// A padded batch of rows of the given lengths with seeded ids, POS ids and labels (every third
/// position unlabelled), as `read_reference` gives (without PyTorch's outputs).
pub fn synthetic_reference(lengths: &[usize], vocab: u32, num_pos: u32, labels: u32) -> Reference {
    let (b, t) = (lengths.len(), *lengths.iter().max().unwrap());
    let mut x = 0x9E37_79B9u64;
    let mut next = |n: u32| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % u64::from(n)) as u32
    };
    let (mut ids, mut mask, mut pos) = (vec![0u32; b * t], vec![0u8; b * t], vec![0u32; b * t]);
    let mut lab = vec![-100i32; b * t];
    for (r, &len) in lengths.iter().enumerate() {
        for p in 0..len {
            ids[r * t + p] = 1000 + next(vocab - 1000);
            mask[r * t + p] = 1;
            pos[r * t + p] = 2 + next(num_pos - 2);
            if p % 3 != 0 {
                lab[r * t + p] = next(labels) as i32;
            }
        }
    }
    let dev = Device::Cpu;
    Reference {
        ids: Tensor::from_vec(ids, (b, t), &dev).unwrap(),
        mask: Tensor::from_vec(mask, (b, t), &dev).unwrap(),
        pos: Tensor::from_vec(pos, (b, t), &dev).unwrap(),
        labels: lab,
        tensors: HashMap::new(),
    }
}

/// The largest absolute value in `t`.
/// N(0, std²) values of `shape` from `seed`: the same every run (candle's `randn` draws from an
/// unseeded generator, which made the parity tests' inputs — and their worst errors — differ from one
/// run to the next).
pub fn seeded_normal(shape: &candle_core::Shape, std: f32, seed: u64) -> Tensor {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0f32, std).expect("a finite standard deviation");
    let values: Vec<f32> = (0..shape.elem_count())
        .map(|_| normal.sample(&mut rng))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
