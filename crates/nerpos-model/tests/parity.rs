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
