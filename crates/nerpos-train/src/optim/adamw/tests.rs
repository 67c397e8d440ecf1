//! The optimiser's tests: PyTorch's formula, the fused update against the composed one, and the
//! embedding rows skipped exactly; the groups the model's roles give.

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use nerpos_model::{Deferred, Grad, Role};

use super::*;
use crate::optim::schedule::lr_factor;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .unwrap()
}

/// The roles the model gives its parameters put them in PyTorch's usual groups: weight decay on
/// weights only, the head (POS embedding, classifier) at its own learning rate.
#[test]
fn decay_groups() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../nerpos-model/tests/fixtures/tiny/model");
    let (model, _) = nerpos_model::BertNerPos::load(&dir, &candle_core::Device::Cpu).unwrap();
    let role = |n: &str| model.params.with_roles().find(|(k, ..)| *k == n).unwrap().2;
    assert!(role("encoder.layer.0.attention.self.query.weight").decay);
    assert!(role("classifier.weight").decay && role("classifier.weight").head);
    for n in [
        "classifier.bias",
        "embeddings.LayerNorm.weight",
        "embeddings.word_embeddings.weight",
        "pos_embedding.weight",
    ] {
        assert!(!role(n).decay, "{n}");
    }
    assert!(role("pos_embedding.weight").head && role("pos_embedding.weight").table);
    assert!(role("embeddings.word_embeddings.weight").table);
    assert!(!role("encoder.layer.1.output.dense.weight").head);
}

/// The fused CPU update equals PyTorch's AdamW formula computed step by step in f64.
#[test]
fn fused_update_follows_pytorch_adamw() {
    let dev = candle_core::Device::Cpu;
    let var = Var::from_vec(vec![0.5f32, -1.0, 2.0], 3, &dev).unwrap();
    let cfg = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
        decay_all: true,
    };
    let mut opt = AdamW::new([("w", &var, Role::WEIGHT)].into_iter(), cfg, Update::Fused).unwrap();
    let grads_seq = [[0.1f32, -0.2, 0.3], [0.05, 0.1, -0.4], [-0.3, 0.2, 0.0]];
    let (mut p, mut m, mut v) = ([0.5f64, -1.0, 2.0], [0f64; 3], [0f64; 3]);
    for (t, g) in grads_seq.iter().enumerate() {
        let mut grads = BTreeMap::new();
        grads.insert(
            "w".to_string(),
            Grad::Dense(Tensor::new(&g[..], &dev).unwrap()),
        );
        opt.step(&grads, &GradScale::plain(0.5), 1e-2, 1e-2)
            .unwrap();
        let step = (t + 1) as i32;
        for i in 0..3 {
            let gi = g[i] as f64 * 0.5;
            p[i] *= 1.0 - 1e-2 * 0.1;
            m[i] += 0.1 * (gi - m[i]);
            v[i] = 0.999 * v[i] + 0.001 * gi * gi;
            let denom = v[i].sqrt() / (1.0 - 0.999f64.powi(step)).sqrt() + 1e-8;
            p[i] -= 1e-2 / (1.0 - 0.9f64.powi(step)) * m[i] / denom;
        }
    }
    let ours = var.as_tensor().to_vec1::<f32>().unwrap();
    for i in 0..3 {
        assert!((ours[i] as f64 - p[i]).abs() < 1e-6, "{ours:?} vs {p:?}");
    }
    // Moments survive a save and load.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    let st: std::collections::HashMap<String, Tensor> =
        opt.state_tensors().unwrap().into_iter().collect();
    candle_core::safetensors::save(&st, &path).unwrap();
    let var2 = Var::from_vec(ours.clone(), 3, &dev).unwrap();
    let mut opt2 =
        AdamW::new([("w", &var2, Role::WEIGHT)].into_iter(), cfg, Update::Fused).unwrap();
    opt2.load_state(&path, opt.steps).unwrap();
    let mut grads = BTreeMap::new();
    grads.insert(
        "w".to_string(),
        Grad::Dense(Tensor::new(&[0.2f32, 0.2, 0.2][..], &dev).unwrap()),
    );
    opt.step(&grads, &GradScale::plain(1.0), 1e-2, 1e-2)
        .unwrap();
    opt2.step(&grads, &GradScale::plain(1.0), 1e-2, 1e-2)
        .unwrap();
    assert_eq!(
        var.as_tensor().to_vec1::<f32>().unwrap(),
        var2.as_tensor().to_vec1::<f32>().unwrap()
    );
}

/// The configuration of the comparisons below.
const CFG: AdamWConfig = AdamWConfig {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.01,
    decay_all: false,
};

/// The fused update (one pass per parameter) gives what the plain, tensor-op version gives.
#[test]
fn fused_matches_the_plain_version() {
    use rand::{Rng, SeedableRng};
    let dev = candle_core::Device::Cpu;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let shapes: [&[usize]; 4] = [&[64, 48], &[48], &[1000], &[7, 3, 5]];
    let names = [
        ("encoder.layer.0.attention.self.query.weight", Role::WEIGHT),
        ("encoder.layer.0.attention.self.query.bias", Role::BIAS),
        ("classifier.weight", Role::WEIGHT.in_head()),
        ("pos_embedding.weight", Role::TABLE.in_head()),
    ];
    let init: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| {
            (0..s.iter().product::<usize>())
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect()
        })
        .collect();
    let vars = |_: ()| -> Vec<Var> {
        init.iter()
            .zip(shapes)
            .map(|(v, s)| Var::from_vec(v.clone(), s, &dev).unwrap())
            .collect()
    };
    let (a, b) = (vars(()), vars(()));
    let cfg = CFG;
    let with = |vars: &[Var]| -> Vec<(&str, Var, Role)> {
        names
            .iter()
            .zip(vars)
            .map(|(&(n, r), v)| (n, v.clone(), r))
            .collect()
    };
    let (pa, pb) = (with(&a), with(&b));
    let mut fused = AdamW::new(pa.iter().map(|(n, v, r)| (*n, v, *r)), cfg, Update::Fused).unwrap();
    let mut plain = AdamW::new(
        pb.iter().map(|(n, v, r)| (*n, v, *r)),
        cfg,
        Update::Reference,
    )
    .unwrap();
    for step in 0..20 {
        let grads: BTreeMap<String, Grad> = names
            .iter()
            .zip(shapes)
            .map(|((n, _), s)| {
                let g: Vec<f32> = (0..s.iter().product::<usize>())
                    .map(|_| rng.random_range(-3.0f32..3.0))
                    .collect();
                (
                    n.to_string(),
                    Grad::Dense(Tensor::from_vec(g, s, &dev).unwrap()),
                )
            })
            .collect();
        let lr = 1e-3 * lr_factor(step, 2, 20);
        fused
            .step(&grads, &GradScale::plain(0.25), lr, 2.0 * lr)
            .unwrap();
        // The plain update takes its clipping factor as a tensor (as a GPU keeps it).
        let held = GradScale {
            scale: 0.5,
            clip: Deferred::Device(Tensor::new(0.5f32, &dev).unwrap()),
        };
        plain.step(&grads, &held, lr, 2.0 * lr).unwrap();
    }
    for (x, y) in a.iter().zip(&b) {
        let d = max_abs_diff(x.as_tensor(), y.as_tensor());
        assert!(d <= 1e-6, "fused and plain AdamW differ by {d}");
    }
    let moments = |o: &AdamW| o.state_tensors().unwrap();
    let (mf, mp) = (moments(&fused), moments(&plain));
    for (k, t) in &mf {
        let d = max_abs_diff(t, &mp[k]);
        assert!(d <= 1e-6, "{k}: moments differ by {d}");
    }
}

/// Embedding rows that never had a gradient are skipped — exactly: the result equals the plain
/// update of every row, across a save and a load of the moments.
#[test]
fn skipping_untouched_embedding_rows_is_exact() {
    use rand::{Rng, SeedableRng};
    let dev = candle_core::Device::Cpu;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let (rows, width) = (50, 6);
    let init: Vec<f32> = (0..rows * width)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let name = "embeddings.word_embeddings.weight";
    let a = Var::from_vec(init.clone(), (rows, width), &dev).unwrap();
    let b = Var::from_vec(init, (rows, width), &dev).unwrap();
    let cfg = CFG;
    let mut fused = AdamW::new([(name, &a, Role::TABLE)].into_iter(), cfg, Update::Fused).unwrap();
    let mut plain = AdamW::new(
        [(name, &b, Role::TABLE)].into_iter(),
        cfg,
        Update::Reference,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for step in 0..12 {
        // Each step touches a few rows; rows 40.. never. The fused update gets them as rows
        // (even steps) or dense (odd steps), the plain one dense.
        let mut ids: Vec<u32> = (0..4).map(|_| rng.random_range(0..40u32)).collect();
        ids.sort_unstable();
        ids.dedup();
        let values: Vec<f32> = (0..ids.len() * width)
            .map(|_| rng.random_range(-2.0f32..2.0))
            .collect();
        let rows_grad = Grad::Rows {
            values: Tensor::from_vec(values, (ids.len(), width), &dev).unwrap(),
            ids,
            rows,
        };
        let dense = Grad::Dense(rows_grad.to_dense().unwrap());
        let as_map =
            |g: &Grad| -> BTreeMap<String, Grad> { [(name.to_string(), g.clone())].into() };
        let fused_grad = if step % 2 == 0 { &rows_grad } else { &dense };
        fused
            .step(&as_map(fused_grad), &GradScale::plain(0.5), 1e-2, 1e-2)
            .unwrap();
        plain
            .step(&as_map(&dense), &GradScale::plain(0.5), 1e-2, 1e-2)
            .unwrap();
        if step == 5 {
            // Save and reload: the touched rows are recovered from the moments.
            let path = dir.path().join("opt.safetensors");
            let st: std::collections::HashMap<String, Tensor> =
                fused.state_tensors().unwrap().into_iter().collect();
            candle_core::safetensors::save(&st, &path).unwrap();
            let steps = fused.steps;
            fused = AdamW::new([(name, &a, Role::TABLE)].into_iter(), cfg, Update::Fused).unwrap();
            fused.load_state(&path, steps).unwrap();
        }
    }
    let d = max_abs_diff(a.as_tensor(), b.as_tensor());
    assert!(
        d <= 1e-6,
        "row-skipping AdamW differs from the plain one by {d}"
    );
}
