//! Where tests find the data that is too large to commit: the GMB corpus beside the project
//! (`../shared/data/ner_dataset.csv`, or `data/ner_dataset.csv`) and checkpoints fetched by
//! `data/fetch-minilm.sh`. Tests that need them call these and skip, saying why, when they are absent.

use std::path::{Path, PathBuf};

/// The repository root (this crate lives in `crates/nerpos-testdata`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/nerpos-testdata is two levels below the root")
        .to_path_buf()
}

/// The full GMB corpus: `$NERPOS_GMB_CSV`, `data/ner_dataset.csv` or `../shared/data/ner_dataset.csv`.
/// `None` (with a message on stderr naming `test`) when none exists.
pub fn gmb_csv(test: &str) -> Option<PathBuf> {
    let root = repo_root();
    let candidates = std::env::var_os("NERPOS_GMB_CSV")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            root.join("data/ner_dataset.csv"),
            root.join("../shared/data/ner_dataset.csv"),
        ]);
    let found = candidates.into_iter().find(|p| p.is_file());
    if found.is_none() {
        eprintln!(
            "SKIPPED {test}: the GMB corpus is absent (looked for $NERPOS_GMB_CSV, data/ner_dataset.csv \
             and ../shared/data/ner_dataset.csv; see data/README.md)"
        );
    }
    found
}

/// The all-MiniLM-L6-v2 checkpoint folder: `$NERPOS_MINILM` or `data/models/all-MiniLM-L6-v2`. `None`
/// (with a message naming `test`) when absent.
pub fn minilm(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("NERPOS_MINILM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("data/models/all-MiniLM-L6-v2"));
    if dir.join("model.safetensors").is_file() && dir.join("tokenizer.json").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED {test}: no MiniLM checkpoint at {} (run data/fetch-minilm.sh)",
            dir.display()
        );
        None
    }
}
