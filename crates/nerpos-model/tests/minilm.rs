//! Parity with Hugging Face on the real all-MiniLM-L6-v2 checkpoint, and a saved folder read back by
//! Hugging Face. Needs the checkpoint (data/fetch-minilm.sh) and the reference Python environment
//! (tests/reference/setup-venv.sh requirements-model.txt); skips with a message otherwise.

mod common;

use std::collections::HashMap;
use std::process::Command;

use candle_core::{Device, Tensor};
use nerpos_model::{BertNerPos, HeadInit};

#[test]
fn minilm_matches_pytorch_and_saved_folder_loads_in_transformers() {
    let name = "minilm_matches_pytorch_and_saved_folder_loads_in_transformers";
    let (Some(minilm), Some(python)) = (
        nerpos_testdata::minilm(name),
        nerpos_testdata::reference_python(
            name,
            &["torch", "transformers"],
            "requirements-model.txt",
        ),
    ) else {
        return;
    };
    let script = nerpos_testdata::repo_root().join("tests/reference/model_reference.py");
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        let o = Command::new(&python)
            .arg(&script)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run(&[
        "checkpoint".as_ref(),
        minilm.as_os_str(),
        tmp.path().as_os_str(),
    ]);

    // 1. Same weights, same batch: logits, loss and gradients as PyTorch.
    let (model, meta) = BertNerPos::load(&tmp.path().join("model"), &Device::Cpu).unwrap();
    let reference = common::read_reference(&tmp.path().join("expected.safetensors"));
    let (e_logits, e_loss, e_grad) = common::compare(&model, &reference, 1e-4);
    let e_manual = common::compare_manual(&model, &reference, 1e-4);
    eprintln!(
        "MiniLM parity: logits {e_logits:.2e}, loss {e_loss:.2e}, gradients {e_grad:.2e} (autograd), {e_manual:.2e} (hand-written)"
    );

    // 2. Saved by us, read back by us: identical outputs.
    let saved = tmp.path().join("saved");
    model
        .save(&saved, &minilm, &meta, &Default::default())
        .unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "nerpos.json",
        "tokenizer.json",
        "vocab.txt",
    ] {
        assert!(saved.join(f).is_file(), "{f} missing from the saved folder");
    }
    let (again, meta_again) = BertNerPos::load(&saved, &Device::Cpu).unwrap();
    assert_eq!(meta_again, meta);
    let (inputs, _) = reference.packed(false).to_device(&Device::Cpu).unwrap();
    let ours = model.eval_logits(&inputs).unwrap();
    let reloaded = again.eval_logits(&inputs).unwrap();
    assert_eq!(common::rel_error(&reloaded, &ours), 0.0);

    // 3. Saved by us, read by transformers' BertModel.from_pretrained plus the head: same logits.
    let inputs = save_inputs(&reference, tmp.path());
    let out = tmp.path().join("hf_logits.safetensors");
    run(&[
        "reload".as_ref(),
        saved.as_os_str(),
        inputs.as_os_str(),
        out.as_os_str(),
    ]);
    let hf = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let e = common::rel_error(&ours, &reference.at_real_tokens(&hf["logits"]));
    eprintln!("saved folder through BertModel.from_pretrained: logits max relative error {e:.2e}");
    assert!(e <= 1e-4, "{e}");
}

/// The reference's padded batch as the reference script's `reload` reads it.
fn save_inputs(reference: &common::Reference, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("inputs.safetensors");
    let batch: HashMap<String, Tensor> = ["input_ids", "attention_mask", "pos_ids"]
        .into_iter()
        .map(|k| (k.to_string(), reference.tensors[k].clone()))
        .collect();
    candle_core::safetensors::save(&batch, &path).unwrap();
    path
}

/// On the real checkpoint: the packed pass equals the padded autograd oracle (logits and gradients)
/// on a batch of rows of different lengths, and a row's logits do not depend on the rows packed
/// with it — nor, training with the default dropout rates (the checkpoint's 0.1, the head's 0.2),
/// its loss and gradients. Needs only the checkpoint.
#[test]
fn minilm_packed_equals_padded_and_rows_are_independent() {
    let name = "minilm_packed_equals_padded_and_rows_are_independent";
    let Some(minilm) = nerpos_testdata::minilm(name) else {
        return;
    };
    let head = nerpos_model::HeadConfig {
        num_labels: 17,
        num_pos: 44,
        pos_dim: 384,
        use_pos: true,
        dropout: 0.0,
        kind: nerpos_model::HeadKind::Softmax,
        labels: Vec::new(),
        pos_tagger: None,
        pos_from_tagger: false,
        pos_tagger_layer: None,
        tagger_pos_share: 0.0,
    };
    let (model, _) = BertNerPos::from_pretrained(
        &minilm,
        head,
        Some(0.0),
        (HeadInit::default(), 3),
        &Device::Cpu,
    )
    .unwrap();
    let reference = common::synthetic_reference(&[23, 7, 41, 16], 30_000, 44, 17);
    let (e_logits, e_grad) = common::packed_vs_oracle(&model, &reference);
    eprintln!("MiniLM packed vs padded: logits {e_logits:.2e}, gradients {e_grad:.2e}");
    // f32 summation order: 1.2e-5 (layer 1's query weight) with the design's head, whose N(0, 1) POS
    // vectors make the gradients larger than Hugging Face's N(0, 0.02) head did (below 1e-5).
    assert!(e_logits <= 1e-5 && e_grad <= 2e-5, "{e_logits} {e_grad}");
    let d = common::composition_difference(&model, &reference.packed(false));
    eprintln!("MiniLM row alone vs packed: max |logit difference| {d:.2e}");
    assert!(d <= 1e-5, "{d}");

    let head = nerpos_model::HeadConfig {
        dropout: 0.2,
        kind: nerpos_model::HeadKind::Softmax,
        labels: Vec::new(),
        pos_tagger: None,
        pos_from_tagger: false,
        ..model.config.head.clone()
    };
    let (model, _) =
        BertNerPos::from_pretrained(&minilm, head, None, (HeadInit::default(), 3), &Device::Cpu)
            .unwrap();
    assert_eq!(model.config.bert.hidden_dropout_prob, 0.1);
    let noise = nerpos_model::Noise { seed: 42, step: 11 };
    let d = common::dropout_composition_difference(&model, &reference.packed(true), noise);
    eprintln!("MiniLM with dropout, rows alone and reordered vs packed: max relative {d:.2e}");
    assert!(d <= 1e-5, "{d}");
}
