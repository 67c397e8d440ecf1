//! What the nerpos-predict tests share: the tiny fixture model as a fine-tuned folder.

use std::path::{Path, PathBuf};

/// The tiny fixture model of nerpos-model with real tag names and a 100-token vocabulary.
pub fn model_folder(dir: &Path) -> PathBuf {
    let src = nerpos_testdata::repo_root().join("crates/nerpos-model/tests/fixtures/tiny/model");
    let out = dir.join("model");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let mut vocab: Vec<String> = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "paris", "london", "is", "in", ".",
        "new", "york",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    while vocab.len() < 100 {
        vocab.push(format!("tok{}", vocab.len()));
    }
    std::fs::write(out.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    let meta = serde_json::json!({
        "format_version": 1, "created_by": "test",
        "labels": ["B-geo", "B-per", "I-geo", "I-per", "O", "B-org", "I-org"],
        "pos": ["<pad>", "<unk>", "DT", "NNP", "VBZ", "IN", ".", "NN", "JJ", "CD"],
        "pos_pad_id": 0, "pos_unk_id": 1, "pos_dim": 24, "use_pos": true, "max_len": 8, "dropout": 0.2
    });
    std::fs::write(
        out.join("nerpos.json"),
        serde_json::to_string_pretty(&meta).unwrap(),
    )
    .unwrap();
    out
}
