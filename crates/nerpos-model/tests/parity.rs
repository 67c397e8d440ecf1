//! Hugging Face parity on the committed fixture (tests/reference/model_reference.py tiny): a 2-layer
//! random BERT with the POS head; logits, loss and the gradient of every parameter within 1e-4.

mod common;

use std::path::Path;

use candle_core::Device;
use nerpos_model::BertNerPos;

#[test]
fn tiny_model_matches_pytorch() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    let (model, meta) = BertNerPos::load(&dir.join("model"), &Device::Cpu).unwrap();
    assert_eq!(meta.labels.len(), 7);
    assert_eq!(model.params.len(), 2 * 16 + 5 + 3);
    let reference = common::read_reference(&dir.join("expected.safetensors"));
    common::compare(&model, &reference, 1e-4);
    common::compare_manual(&model, &reference, 1e-4);
}

/// The packed pass (no padding anywhere) equals the padded autograd oracle on the fixture's padded
/// batch, and a row's logits do not depend on the rows packed with it — nor, in training with the
/// model's dropout rates, its loss and gradients (its masks are keyed by its sentence).
#[test]
fn packed_equals_padded_and_rows_are_independent() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    let (model, _) = BertNerPos::load(&dir.join("model"), &Device::Cpu).unwrap();
    let reference = common::read_reference(&dir.join("expected.safetensors"));
    let (e_logits, e_grad) = common::packed_vs_oracle(&model, &reference);
    eprintln!("packed vs padded: logits {e_logits:.2e}, gradients {e_grad:.2e}");
    assert!(e_logits <= 1e-5 && e_grad <= 1e-5, "{e_logits} {e_grad}");
    let d = common::composition_difference(&model, &reference.packed(false));
    eprintln!("a row alone vs packed with others: max |logit difference| {d:.2e}");
    assert!(d <= 1e-5, "{d}");
    let noise = nerpos_model::Noise { seed: 3, step: 7 };
    assert!(model.config.bert.hidden_dropout_prob > 0.0 && model.config.head.dropout > 0.0);
    let d = common::dropout_composition_difference(&model, &reference.packed(true), noise);
    eprintln!("with dropout, rows alone and reordered vs packed: max relative difference {d:.2e}");
    assert!(d <= 1e-5, "{d}");
}

const TAGGER_WEIGHT: f64 = 0.7;

/// The fixture's model with a POS tagger (weight 0.7) of random weights.
fn tagger_model() -> (BertNerPos, common::Reference) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    let (base, _) = BertNerPos::load(&dir.join("model"), &Device::Cpu).unwrap();
    let mut config = base.config.clone();
    config.head.pos_tagger = Some(TAGGER_WEIGHT);
    let model = BertNerPos::new(config, &Device::Cpu).unwrap();
    for (k, (name, var)) in model.params.iter().enumerate() {
        let value = match base.params.get(name) {
            Some(v) => v.as_tensor().clone(),
            None => (common::seeded_normal(var.shape(), 0.5, k as u64) * (1.0 + k as f64)).unwrap(),
        };
        var.set(&value).unwrap();
    }
    let r = common::read_reference(&dir.join("expected.safetensors"));
    (model, r)
}

/// The fixture's labelled batch with the POS tagger's targets (the POS ids at the head positions),
/// and every third POS id replaced by `<unk>` when `dropped` (as POS dropout does).
/// The POS tagger's targets: each labelled position's corpus POS id (-100 elsewhere).
fn pos_labels(r: &common::Reference) -> Vec<i32> {
    let pos_flat = r.pos.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    r.labels
        .iter()
        .zip(&pos_flat)
        .map(|(&l, &p)| if l >= 0 { p as i32 } else { -100 })
        .collect()
}

fn tagger_batch(r: &common::Reference, dropped: bool) -> nerpos_model::PackedBatch {
    let mut batch = r.packed(true);
    batch.pos_targets = batch
        .head
        .iter()
        .map(|&p| batch.pos_ids[p as usize])
        .collect();
    if dropped {
        batch.pos_ids.iter_mut().step_by(3).for_each(|p| *p = 1);
    }
    batch
}

/// The POS tagger (a linear layer on the encoder beside the NER head, reading it without sending
/// gradient back): the packed pass's loss (NER + weight × POS cross-entropy) and every gradient equal
/// the autograd oracle's with the encoder's output detached before the tagger; the tagger's targets
/// are the POS ids before POS dropout.
#[test]
fn pos_tagger_matches_the_oracle() {
    let (model, r) = tagger_model();
    let padded = common::oracle::logits(&model, &r.ids, &r.mask, &r.pos);
    let pos_padded = common::oracle::pos_logits(&model, &r.ids, &r.mask);
    let pos_labels = pos_labels(&r);
    let loss = (common::oracle::loss(&padded, &r.labels)
        + (common::oracle::loss(&pos_padded, &pos_labels) * TAGGER_WEIGHT).unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let step = |dropped| {
        let (inputs, targets) = tagger_batch(&r, dropped).to_device(&Device::Cpu).unwrap();
        model
            .forward_backward(&inputs, &targets.unwrap(), None)
            .unwrap()
    };
    let (clean, dropped) = (step(false), step(true));
    let want = f64::from(loss.to_scalar::<f32>().unwrap());
    let mut worst: f64 = 0.0;
    for (name, var) in model.params.iter() {
        if !name.ends_with("attention.self.key.bias") {
            let theirs = grads.get(var.as_tensor()).unwrap();
            worst = worst.max(common::rel_error(
                &clean.grads[name].to_dense().unwrap(),
                theirs,
            ));
        }
    }
    eprintln!(
        "POS tagger vs oracle: loss {} / {want}, gradients {worst:.2e}",
        clean.loss_sum
    );
    assert!((clean.loss_sum - want).abs() <= 1e-4 * want.abs());
    assert!(worst <= 1e-5, "{worst}");
    for name in [
        nerpos_model::model::POS_TAGGER_WEIGHT,
        nerpos_model::model::POS_TAGGER_BIAS,
    ] {
        let d = common::rel_error(
            &dropped.grads[name].to_dense().unwrap(),
            &clean.grads[name].to_dense().unwrap(),
        );
        assert!(
            d <= 1e-6,
            "{name}: POS dropout changed the tagger's targets ({d})"
        );
    }
}

/// Predicting POS: the tagger's tags are the oracle's argmax, and the NER logits are the oracle's
/// with the POS embedding fed the tagger's distribution (Σ p(tag)·E[tag]).
#[test]
fn predicted_pos_feeds_the_pos_embedding() {
    let (model, r) = tagger_model();
    let pos_padded = common::oracle::pos_logits(&model, &r.ids, &r.mask);
    let (inputs, _) = r.packed(false).to_device(&Device::Cpu).unwrap();
    let out = model
        .eval(&inputs, nerpos_model::PosSource::Predicted)
        .unwrap();
    let tags = out.pos_logits.unwrap().argmax(1).unwrap();
    let want = r.at_real_tokens(&pos_padded).argmax(1).unwrap();
    assert_eq!(
        tags.to_vec1::<u32>().unwrap(),
        want.to_vec1::<u32>().unwrap()
    );
    let soft = common::oracle::logits_tagger_pos(&model, &r.ids, &r.mask);
    let d = common::rel_error(&out.logits, &r.at_real_tokens(&soft));
    assert!(d <= 1e-5, "{d}");
}

/// `pos_from_tagger`: training feeds the POS embedding the tagger's tags — the same loss and gradients
/// as the model fed those tags as its input (the tagger still learning the corpus's).
#[test]
fn training_on_the_taggers_pos_equals_being_given_them() {
    let (model, r) = tagger_model();
    let mut config = model.config.clone();
    config.head.pos_from_tagger = true;
    let fed = BertNerPos::new(config, &Device::Cpu).unwrap();
    fed.copy_from(&model).unwrap();
    let batch = tagger_batch(&r, false);
    let (inputs, _) = batch.to_device(&Device::Cpu).unwrap();
    let tags = model
        .eval(&inputs, nerpos_model::PosSource::Predicted)
        .unwrap()
        .pos_logits
        .unwrap()
        .argmax(1)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let mut given = batch.clone();
    for (&p, &t) in batch.head.iter().zip(&tags) {
        given.pos_ids[p as usize] = t;
    }
    assert_ne!(
        given.pos_ids, batch.pos_ids,
        "the random tagger disagrees with the corpus"
    );
    let step = |m: &BertNerPos, b: &nerpos_model::PackedBatch| {
        let (x, y) = b.to_device(&Device::Cpu).unwrap();
        m.forward_backward(&x, &y.unwrap(), None).unwrap()
    };
    let (a, b) = (step(&fed, &batch), step(&model, &given));
    assert!((a.loss_sum - b.loss_sum).abs() <= 1e-6 * b.loss_sum.abs());
    for (name, g) in &a.grads {
        let d = common::rel_error(&g.to_dense().unwrap(), &b.grads[name].to_dense().unwrap());
        assert!(d <= 1e-6, "{name}: {d}");
    }
}

/// `tagger_pos_share`: a drawn sentence's POS embedding is the tagger's distribution's over the
/// predicted tags' own table (a constant distribution: the tagger stays a probe). With every sentence
/// drawn (share 1), the loss and every gradient equal the autograd oracle's with the embedding
/// Σ p(tag)·E_tagged[tag] — that table's gradient through the distribution, none for the corpus
/// tags' table, the tagger's from its own loss only; prediction without POS reads the same table.
#[test]
fn sentences_fed_the_taggers_distribution_match_the_oracle() {
    let (model, r) = tagger_model();
    let mut config = model.config.clone();
    config.head.tagger_pos_share = 1.0;
    config.head.dropout = 0.0;
    config.bert.hidden_dropout_prob = 0.0;
    config.bert.attention_probs_dropout_prob = 0.0;
    let mixed = BertNerPos::new(config, &Device::Cpu).unwrap();
    for (k, (name, var)) in mixed.params.iter().enumerate() {
        let value = match model.params.get(name) {
            Some(v) => v.as_tensor().clone(),
            None => common::seeded_normal(var.shape(), 1.0, 1_000 + k as u64),
        };
        var.set(&value).unwrap();
    }
    assert!(
        mixed
            .params
            .get(nerpos_model::model::POS_EMBEDDING_TAGGED)
            .is_some()
    );
    let soft = common::oracle::logits_tagger_pos(&mixed, &r.ids, &r.mask);
    let pos_padded = common::oracle::pos_logits(&mixed, &r.ids, &r.mask);
    let pos_labels = pos_labels(&r);
    let loss = (common::oracle::loss(&soft, &r.labels)
        + (common::oracle::loss(&pos_padded, &pos_labels) * TAGGER_WEIGHT).unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let (inputs, targets) = tagger_batch(&r, false).to_device(&Device::Cpu).unwrap();
    let noise = nerpos_model::Noise { seed: 3, step: 1 };
    let out = mixed
        .forward_backward(&inputs, &targets.unwrap(), Some(noise))
        .unwrap();
    let want = f64::from(loss.to_scalar::<f32>().unwrap());
    assert!(
        (out.loss_sum - want).abs() <= 1e-4 * want.abs(),
        "{} vs {want}",
        out.loss_sum
    );
    let mut worst: f64 = 0.0;
    for (name, var) in mixed.params.iter() {
        // The oracle's graph has no corpus-tag embedding here (checked to be zero below).
        if let Some(theirs) = grads.get(var.as_tensor())
            && !name.ends_with("attention.self.key.bias")
        {
            let e = common::rel_error(&out.grads[name].to_dense().unwrap(), theirs);
            worst = worst.max(e);
        }
    }
    assert!(worst <= 1e-5, "{worst}");
    let zero = common::max_abs(
        &out.grads[nerpos_model::model::POS_EMBEDDING]
            .to_dense()
            .unwrap(),
    );
    assert_eq!(zero, 0.0, "the corpus tags' table had no sentence");
    let (x, _) = r.packed(false).to_device(&Device::Cpu).unwrap();
    let predicted = mixed.eval(&x, nerpos_model::PosSource::Predicted).unwrap();
    let d = common::rel_error(&predicted.logits, &r.at_real_tokens(&soft));
    assert!(d <= 1e-5, "prediction without POS: {d}");
}

/// A batch in which `tagger_pos_share` draws no sentence (a share of 2⁻⁴⁰ here; 0.75¹⁶ ≈ 1 % of
/// 16-sentence batches at 0.25) trains exactly as the model without the share, and still hands the
/// predicted tags' table its (zero) gradient in the gradient order.
#[test]
fn a_batch_with_no_sentence_drawn_for_the_taggers_pos_keeps_the_gradient_order() {
    let (model, r) = tagger_model();
    let mut config = model.config.clone();
    config.head.tagger_pos_share = 2f64.powi(-40);
    let mixed = BertNerPos::new(config, &Device::Cpu).unwrap();
    for (name, var) in mixed.params.iter() {
        if let Some(v) = model.params.get(name) {
            var.set(v.as_tensor()).unwrap();
        }
    }
    let (inputs, targets) = tagger_batch(&r, false).to_device(&Device::Cpu).unwrap();
    let noise = Some(nerpos_model::Noise { seed: 3, step: 1 });
    let targets = targets.unwrap();
    let out = mixed.forward_backward(&inputs, &targets, noise).unwrap();
    let plain = model.forward_backward(&inputs, &targets, noise).unwrap();
    assert_eq!(out.loss_sum, plain.loss_sum);
    for (name, g) in &plain.grads {
        let d = common::rel_error(&g.to_dense().unwrap(), &out.grads[name].to_dense().unwrap());
        assert_eq!(d, 0.0, "{name}");
    }
    let tagged = common::max_abs(
        &out.grads[nerpos_model::model::POS_EMBEDDING_TAGGED]
            .to_dense()
            .unwrap(),
    );
    assert_eq!(tagged, 0.0);
}
