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
