//! Loading rules, dropout, head initialisation, saving — without a reference implementation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use nerpos_model::{BertNerPos, HeadConfig, HeadInit, NerposMeta, PackedBatch};

fn tiny_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/model")
}

fn head() -> HeadConfig {
    HeadConfig {
        num_labels: 7,
        num_pos: 10,
        pos_dim: 24,
        use_pos: true,
        dropout: 0.2,
        kind: nerpos_model::HeadKind::Softmax,
        labels: Vec::new(),
        pos_tagger: None,
        pos_from_tagger: false,
        pos_tagger_layer: None,
        tagger_pos_share: 0.0,
    }
}

/// Two rows (12 and 8 sub-words); the head on every token, labelled `i % 7` except every fifth.
fn batch() -> PackedBatch {
    let ids: Vec<u32> = (0..2 * 12).map(|i| (i * 7 % 97 + 3) as u32).collect();
    let pos: Vec<u32> = (0..2 * 12).map(|i| (i % 8 + 2) as u32).collect();
    let mut b = PackedBatch::new();
    for (span, at) in [(0..12, 0), (12..20, 12)] {
        let labelled = span
            .clone()
            .filter(|i| i % 5 != 0)
            .map(|i| (i - at, Some((i % 7) as u32)));
        b.push_row(at as u64, &ids[span.clone()], &pos[span], labelled);
    }
    b
}

fn inputs(dev: &Device) -> nerpos_model::Inputs {
    batch().to_device(dev).unwrap().0
}

fn targets(dev: &Device) -> nerpos_model::Targets {
    batch().to_device(dev).unwrap().1.unwrap()
}

/// Evaluation logits of the batch, flattened.
fn eval(m: &BertNerPos, x: &nerpos_model::Inputs) -> Vec<f32> {
    m.eval_logits(x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Copies the tiny fixture's folder, letting `edit` change its weights.
fn copy_with(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let out = dir.join("edited");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "nerpos.json"] {
        std::fs::copy(tiny_dir().join(f), out.join(f)).unwrap();
    }
    let mut w =
        candle_core::safetensors::load(tiny_dir().join("model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut w);
    candle_core::safetensors::save(&w, out.join("model.safetensors")).unwrap();
    out
}

#[test]
fn pretrained_folder_with_bert_prefix_and_old_names_gets_a_seeded_head() {
    let tmp = tempfile::tempdir().unwrap();
    // A task-model checkpoint: `bert.` prefix, gamma/beta LayerNorm names, an MLM head, no nerpos head.
    let dir = copy_with(tmp.path(), |w| {
        let keys: Vec<String> = w.keys().cloned().collect();
        for k in keys {
            let t = w.remove(&k).unwrap();
            if k.starts_with("pos_embedding") || k.starts_with("classifier") {
                continue;
            }
            let k = k
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            w.insert(format!("bert.{k}"), t);
        }
        w.insert(
            "cls.predictions.bias".into(),
            Tensor::zeros(100, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    std::fs::remove_file(dir.join("nerpos.json")).unwrap();
    let (a, carried) =
        BertNerPos::from_pretrained(&dir, head(), None, (HeadInit::Torch, 5), &Device::Cpu)
            .unwrap();
    let (b, _) =
        BertNerPos::from_pretrained(&dir, head(), None, (HeadInit::Torch, 5), &Device::Cpu)
            .unwrap();
    let (c, _) =
        BertNerPos::from_pretrained(&dir, head(), None, (HeadInit::Torch, 6), &Device::Cpu)
            .unwrap();
    assert!(
        carried.tensors.contains_key("pooler.dense.weight"),
        "the pooler is carried"
    );
    let w = |m: &BertNerPos| {
        m.params
            .get("classifier.weight")
            .unwrap()
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(w(&a), w(&b), "same seed, same head");
    assert_ne!(w(&a), w(&c), "another seed, another head");
    // The design's nn.Linear: weight and bias U(−1/√fan_in, 1/√fan_in), fan_in = 64 + 24 features.
    let bound = 1.0 / (88f32).sqrt();
    let bias = a
        .params
        .get("classifier.bias")
        .unwrap()
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    for (what, v) in [("weight", w(&a)), ("bias", bias)] {
        assert!(
            v.iter().all(|x| x.abs() <= bound),
            "classifier {what} beyond ±{bound}"
        );
        assert!(v.iter().any(|&x| x != 0.0), "classifier {what} all zero");
    }
    // The encoder was loaded (not zero): a LayerNorm weight from the checkpoint.
    let ln = a
        .params
        .get("embeddings.LayerNorm.weight")
        .unwrap()
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    assert!(ln.iter().any(|&x| x != 0.0));
}

/// The new head is drawn as the design's PyTorch module draws it (nn.Embedding: N(0, 1); nn.Linear:
/// U(−1/√fan_in, 1/√fan_in) for weight and bias) and, with `head_init = "bert"`, as Hugging Face draws
/// new modules (N(0, 0.02), zero bias).
#[test]
fn head_is_drawn_as_the_chosen_scheme() {
    let (torch, bert) = (
        drawn_head(HeadInit::Torch, 1),
        drawn_head(HeadInit::Bert, 1),
    );
    let moments = |v: &[f32]| {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    };
    let (mean, std) = moments(&torch["pos_embedding.weight"]);
    assert!(
        mean.abs() < 0.03 && (std - 1.0).abs() < 0.03,
        "POS N(0, 1): {mean} {std}"
    );
    let bound = 1.0 / (HEAD_FEATURES as f64).sqrt();
    for name in ["classifier.weight", "classifier.bias"] {
        let v = &torch[name];
        let max = v.iter().map(|x| f64::from(x.abs())).fold(0.0, f64::max);
        assert!(
            max <= bound && max > 0.9 * bound,
            "{name}: max |x| {max}, bound {bound}"
        );
    }
    let (_, std) = moments(&torch["classifier.weight"]);
    let uniform = bound / 3f64.sqrt();
    assert!(
        (std / uniform - 1.0).abs() < 0.05,
        "classifier std {std}, U(±b) has {uniform}"
    );
    for name in ["pos_embedding.weight", "classifier.weight"] {
        let (_, std) = moments(&bert[name]);
        assert!((std - 0.02).abs() < 0.002, "{name} N(0, 0.02): std {std}");
    }
    assert!(bert["classifier.bias"].iter().all(|&x| x == 0.0));
    assert_eq!(
        torch,
        drawn_head(HeadInit::Torch, 1),
        "same seed, same head"
    );
}

/// Our head's draws and PyTorch's come from the same distributions: a two-sample Kolmogorov–Smirnov
/// test per parameter against nn.Embedding / nn.Linear drawn by PyTorch itself
/// (`tests/reference/head_init_reference.py`), at the shapes of GMB's head on MiniLM.
#[test]
fn head_init_matches_pytorch_distributions() {
    let name = "head_init_matches_pytorch_distributions";
    let Some(python) =
        nerpos_testdata::reference_python(name, &["torch"], "requirements-model.txt")
    else {
        return;
    };
    let script = nerpos_testdata::repo_root().join("tests/reference/head_init_reference.py");
    let o = std::process::Command::new(python)
        .arg(script)
        .args([
            "42",
            &POS_DIM.to_string(),
            &HEAD_FEATURES.to_string(),
            "11",
            "0",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let torch: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ours = drawn_head(HeadInit::Torch, 3);
    for name in [
        "pos_embedding.weight",
        "classifier.weight",
        "classifier.bias",
    ] {
        let theirs: Vec<f32> = serde_json::from_value(torch[name].clone()).unwrap();
        let mine = &ours[name];
        assert_eq!(mine.len(), theirs.len(), "{name}: shapes differ");
        let d = ks_statistic(mine, &theirs);
        let (n, m) = (mine.len() as f64, theirs.len() as f64);
        // Rejects at the 0.1 % level: c(α) = sqrt(−ln(α/2)/2) = 1.95.
        let critical = 1.95 * ((n + m) / (n * m)).sqrt();
        eprintln!("{name}: KS statistic {d:.4} (critical {critical:.4})");
        assert!(
            d < critical,
            "{name}: KS statistic {d} ≥ {critical}: not PyTorch's distribution"
        );
    }
    let bound = torch["linear_bound"].as_f64().unwrap();
    assert!((bound - 1.0 / (HEAD_FEATURES as f64).sqrt()).abs() < 1e-9);
}

const POS_DIM: usize = 384;
/// The tiny encoder's 64 outputs and the POS embedding.
const HEAD_FEATURES: usize = 64 + POS_DIM;

/// A fresh head of 42 POS tags × 384 and 11 labels on the tiny encoder, drawn by `init` from `seed`.
fn drawn_head(init: HeadInit, seed: u64) -> HashMap<String, Vec<f32>> {
    let (bert, _) = nerpos_model::BertConfig::read(&tiny_dir()).unwrap();
    let head = HeadConfig {
        num_labels: 11,
        num_pos: 42,
        pos_dim: POS_DIM,
        use_pos: true,
        dropout: 0.2,
        kind: nerpos_model::HeadKind::Softmax,
        labels: Vec::new(),
        pos_tagger: None,
        pos_from_tagger: false,
        pos_tagger_layer: None,
        tagger_pos_share: 0.0,
    };
    let m = BertNerPos::new(nerpos_model::ModelConfig { bert, head }, &Device::Cpu).unwrap();
    m.init_head(init, seed).unwrap();
    [
        "pos_embedding.weight",
        "classifier.weight",
        "classifier.bias",
    ]
    .into_iter()
    .map(|n| {
        let v = m.params.get(n).unwrap().as_tensor().flatten_all().unwrap();
        (n.to_owned(), v.to_vec1::<f32>().unwrap())
    })
    .collect()
}

/// The two-sample Kolmogorov–Smirnov statistic: the largest gap between the empirical CDFs.
fn ks_statistic(a: &[f32], b: &[f32]) -> f64 {
    let sorted = |v: &[f32]| {
        let mut v = v.to_vec();
        v.sort_by(f32::total_cmp);
        v
    };
    let (a, b) = (sorted(a), sorted(b));
    let (mut i, mut j, mut d) = (0, 0, 0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

/// Loading `dir` fails: the error's text.
fn load_error(dir: &std::path::Path) -> String {
    BertNerPos::load(dir, &Device::Cpu)
        .err()
        .unwrap()
        .to_string()
}

fn zeros(n: usize) -> Tensor {
    Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn weight_problems_are_errors_listing_the_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = copy_with(&tmp.path().join("m"), |w| {
        w.remove("encoder.layer.1.output.dense.weight");
    });
    let err = load_error(&missing);
    assert!(
        err.contains("missing weights: encoder.layer.1.output.dense.weight"),
        "{err}"
    );

    let unexpected = copy_with(&tmp.path().join("u"), |w| {
        w.insert("encoder.layer.9.extra".into(), zeros(3));
    });
    let err = load_error(&unexpected);
    assert!(
        err.contains("unexpected weights: encoder.layer.9.extra"),
        "{err}"
    );

    let shape = copy_with(&tmp.path().join("s"), |w| {
        w.insert("classifier.bias".into(), zeros(9));
    });
    let err = load_error(&shape);
    assert!(
        err.contains("shape mismatches: classifier.bias: checkpoint [9], model [7]"),
        "{err}"
    );

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = load_error(&empty);
    assert!(
        err.contains("nerpos.json") && err.contains("not a fine-tuned"),
        "{err}"
    );
    std::fs::copy(tiny_dir().join("nerpos.json"), empty.join("nerpos.json")).unwrap();
    std::fs::copy(tiny_dir().join("config.json"), empty.join("config.json")).unwrap();
    let err = load_error(&empty);
    assert!(
        err.contains("no model.safetensors or pytorch_model.bin"),
        "{err}"
    );
}

#[test]
fn dropout_is_real_in_training_and_absent_in_evaluation() {
    let dev = Device::Cpu;
    let (model, _) = BertNerPos::load(&tiny_dir(), &dev).unwrap();
    let (x, y) = (inputs(&dev), targets(&dev));
    // Training loss with the masks of a seed; without them (evaluation) no dropout.
    let train = |seed: Option<u64>| {
        let noise = seed.map(|seed| nerpos_model::Noise { seed, step: 0 });
        model.forward_backward(&x, &y, noise).unwrap().loss_sum
    };
    assert_eq!(eval(&model, &x), eval(&model, &x));
    assert_eq!(train(Some(1)), train(Some(1)), "a seed fixes the masks");
    assert_ne!(train(Some(1)), train(Some(2)));
    assert_ne!(train(Some(1)), train(None));

    // The mask zeroes the expected fraction and scales the rest by 1/(1-p).
    let ones = Tensor::ones((200, 500), candle_core::DType::F32, &dev).unwrap();
    let key = nerpos_kernels::dropout::sentence_key(3, 0, 0);
    let at: Vec<_> = (0..200)
        .map(|position| nerpos_kernels::dropout::TokenAt { row: 0, position })
        .collect();
    let site = nerpos_kernels::dropout::Site::Embeddings;
    let bytes = nerpos_kernels::dropout::token_mask(&[key], &at, 500, site, 0.2);
    let mask = nerpos_kernels::Mask {
        tensor: Tensor::from_vec(bytes, (200, 500), &dev).unwrap(),
        p: 0.2,
    };
    let y = nerpos_kernels::ops::residual::masked(&ones, Some(&mask)).unwrap();
    let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let zero = v.iter().filter(|&&x| x == 0.0).count() as f64 / v.len() as f64;
    assert!((zero - 0.2).abs() < 0.005, "zeroed fraction {zero}");
    assert!(v.iter().all(|&x| x == 0.0 || (x - 1.25).abs() < 1e-6));
    let same = nerpos_kernels::ops::residual::masked(&ones, None).unwrap();
    assert_eq!(
        same.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vec![1.0; 100_000]
    );
}

#[test]
fn no_pos_ablation_from_the_same_code() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_with(tmp.path(), |w| {
        w.remove("pos_embedding.weight");
        w.remove("classifier.weight");
        w.remove("classifier.bias");
    });
    std::fs::remove_file(dir.join("nerpos.json")).unwrap();
    let h = HeadConfig {
        use_pos: false,
        ..head()
    };
    let (m, _) =
        BertNerPos::from_pretrained(&dir, h, Some(0.0), (HeadInit::default(), 1), &Device::Cpu)
            .unwrap();
    assert!(m.params.get("pos_embedding.weight").is_none());
    assert_eq!(m.params.get("classifier.weight").unwrap().dims(), [7, 64]);
    assert_eq!(
        m.config.bert.hidden_dropout_prob, 0.0,
        "encoder_dropout overrides the checkpoint"
    );
    let logits = m.eval_logits(&inputs(&Device::Cpu)).unwrap();
    assert_eq!(logits.dims(), [batch().head.len(), 7]);
}

#[test]
fn save_and_load_give_identical_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let (model, meta) = BertNerPos::load(&tiny_dir(), &dev).unwrap();
    let out = tmp.path().join("ft");
    model
        .save(&out, &tiny_dir(), &meta, &Default::default())
        .unwrap();
    // Saving over an existing folder replaces it whole.
    model
        .save(&out, &tiny_dir(), &meta, &Default::default())
        .unwrap();
    let (again, meta2) = BertNerPos::load(&out, &dev).unwrap();
    assert_eq!(meta2, meta);
    let x = inputs(&dev);
    assert_eq!(eval(&model, &x), eval(&again, &x));
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    let meta_json: NerposMeta =
        serde_json::from_str(&std::fs::read_to_string(out.join("nerpos.json")).unwrap()).unwrap();
    assert_eq!(meta_json.pos_dim, 24);
}

/// Mixed precision's compute copy: a bf16 model refreshed from the f32 master runs the device-generic
/// code path (the fused CPU kernels take f32 only) and must track the f32 model to bf16 accuracy.
#[test]
fn bf16_compute_copy_tracks_the_f32_model() {
    let dev = Device::Cpu;
    let (master, _) = BertNerPos::load(&tiny_dir(), &dev).unwrap();
    let half =
        BertNerPos::with_dtype(master.config.clone(), &dev, candle_core::DType::BF16).unwrap();
    half.copy_from(&master).unwrap();
    assert_eq!(half.dtype(), candle_core::DType::BF16);
    let (x, targets) = (inputs(&dev), targets(&dev));
    let full = master.forward_backward(&x, &targets, None).unwrap();
    let low = half.forward_backward(&x, &targets, None).unwrap();
    assert_eq!(full.count, low.count);
    let rel = (full.loss_sum - low.loss_sum).abs() / full.loss_sum;
    assert!(
        rel < 0.02,
        "bf16 loss {} vs f32 {} (relative {rel})",
        low.loss_sum,
        full.loss_sum
    );
    let norm = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
    };
    // Gradients that are zero in exact arithmetic (the key bias: softmax ignores a shift) are compared
    // against the scale of all gradients.
    let dense = |g: &nerpos_model::Grad| {
        g.to_dense()
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
    };
    let total = full
        .grads
        .values()
        .map(|g| norm(&dense(g)).powi(2))
        .sum::<f32>()
        .sqrt();
    for (name, g) in &full.grads {
        let (g, l) = (&dense(g), dense(&low.grads[name]));
        let (diff, n) = (norm(&(g - &l).unwrap()), norm(g));
        assert!(
            diff <= 0.05 * n + 1e-3 * total,
            "{name}: bf16 gradient off by {diff} (norm {n}, all {total})"
        );
    }
    // With dropout, the generic path's masks apply too.
    let noise = nerpos_model::Noise { seed: 7, step: 0 };
    let dropped = half.forward_backward(&x, &targets, Some(noise)).unwrap();
    assert!(dropped.loss_sum.is_finite() && (dropped.loss_sum - low.loss_sum).abs() > 1e-6);
}

/// Inference with the encoder's products in bf16 (`--precision bf16` on a CPU with AVX512-BF16): the
/// logits move by bf16's error only, and the packed model refuses to train (its packed weights would
/// not follow the updates). The kernel itself is held to the rounded inputs' exact product in
/// nerpos-kernels (`bf16_products_match_the_rounded_reference`).
#[test]
fn bf16_products_track_the_f32_model_and_refuse_training() {
    let test = "bf16_products_track_the_f32_model_and_refuse_training";
    if !nerpos_model::PackedBf16::supported() {
        nerpos_testdata::skip_hardware(test, "this CPU has no AVX512-BF16");
        return;
    }
    let dev = Device::Cpu;
    let (f32_model, _) = BertNerPos::load(&tiny_dir(), &dev).unwrap();
    let (packed, _) = BertNerPos::load(&tiny_dir(), &dev).unwrap();
    let packed = packed.with_bf16_products().unwrap();
    let x = inputs(&dev);
    let (full, low) = (eval(&f32_model, &x), eval(&packed, &x));
    let scale = full.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = full
        .iter()
        .zip(&low)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("largest |f32 - bf16 products| logit: {worst:.2e} (largest logit {scale:.2})");
    assert!(worst > 0.0 && worst < 0.02 * scale, "{worst} vs {scale}");
    let err = packed.forward_backward(&x, &targets(&dev), None);
    assert!(err.is_err_and(|e| e.to_string().contains("cannot be trained")));
}

/// Backward hands out the gradients in `gradient_order` (what the trainer's buckets are cut from),
/// one each, the word embeddings' as rows.
#[test]
fn backward_follows_the_gradient_order() {
    let dev = Device::Cpu;
    let (model, _) = BertNerPos::load(&tiny_dir(), &dev).unwrap();
    let mut seen: Vec<(String, bool)> = Vec::new();
    model
        .forward_backward_with(&inputs(&dev), &targets(&dev), None, |name, g| {
            seen.push((
                name.to_owned(),
                matches!(g, nerpos_model::Grad::Rows { .. }),
            ));
            Ok(())
        })
        .unwrap();
    let order: Vec<(String, bool)> = model
        .gradient_order()
        .into_iter()
        .map(|(n, size, rows)| {
            assert_eq!(size, model.params.get(&n).unwrap().elem_count());
            (n, rows)
        })
        .collect();
    assert_eq!(seen, order);
    assert_eq!(order.len(), model.params.len());
}
