//! Shared by the parity tests: reading a reference batch and comparing tensors.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use nerpos_model::{BertNerPos, Inputs, Mode, Targets};

pub struct Reference {
    pub inputs: Inputs,
    pub labels: Vec<i32>,
    pub tensors: HashMap<String, Tensor>,
}

pub fn read_reference(path: &Path) -> Reference {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let u32s = |k: &str| tensors[k].to_dtype(DType::U32).unwrap();
    let inputs = Inputs {
        input_ids: u32s("input_ids"),
        attention_mask: tensors["attention_mask"].to_dtype(DType::U8).unwrap(),
        pos_ids: u32s("pos_ids"),
    };
    let labels: Vec<i32> = tensors["labels"]
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|l| l as i32)
        .collect();
    Reference {
        inputs,
        labels,
        tensors,
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

/// Runs the model on the reference batch (dropout off) and compares logits, loss and every gradient
/// with `tolerance`; returns the worst relative errors (logits, loss, gradients).
pub fn compare(model: &BertNerPos, r: &Reference, tolerance: f64) -> (f64, f64, f64) {
    let logits = model.forward(&r.inputs, &mut Mode::Eval).unwrap();
    let e_logits = rel_error(&logits, &r.tensors["logits"]);
    let targets = Targets::from_labels(&r.labels, &Device::Cpu).unwrap();
    let (loss, count) = BertNerPos::loss(&logits, &targets).unwrap();
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
            let ours = g
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
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

/// The hand-written training pass (`forward_backward`) on the reference batch: loss and every
/// gradient within `tolerance` of the reference; returns the worst gradient error.
pub fn compare_manual(model: &BertNerPos, r: &Reference, tolerance: f64) -> f64 {
    let logits = model.eval_logits(&r.inputs).unwrap();
    let e_logits = rel_error(&logits, &r.tensors["logits"].flatten_to(1).unwrap());
    assert!(e_logits <= tolerance, "eval logits {e_logits}");
    let targets = Targets::from_labels(&r.labels, &Device::Cpu).unwrap();
    let out = model.forward_backward(&r.inputs, &targets, None).unwrap();
    let theirs = r.tensors["loss_sum"]
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[0];
    let e_loss = (out.loss_sum - theirs).abs() / theirs.abs();
    assert!(e_loss <= tolerance, "loss {} vs {theirs}", out.loss_sum);
    let mut worst: (f64, String) = (0.0, String::new());
    for (name, g) in &out.grads {
        let reference = &r.tensors[&format!("grad.{name}")];
        let e = if name.ends_with("attention.self.key.bias") {
            // Exactly zero in theory (see `compare`): only check it is negligible.
            let ours = g
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
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
