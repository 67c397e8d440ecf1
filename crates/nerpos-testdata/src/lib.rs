//! Where tests find the data that is too large to commit: the GMB corpus beside the project
//! (`../shared/data/ner_dataset.csv`, or `data/ner_dataset.csv`), checkpoints fetched by
//! `data/fetch-minilm.sh` and the reference Python environment. Tests that need them call these and
//! skip, saying why, when they are absent — and every skip is recorded (see [`skip`]), so that
//! `tests/run.sh` lists them at the end instead of counting them as passed.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The file `tests/run.sh` collects skipped tests in (one `test<TAB>reason` line each).
pub const SKIP_LOG_ENV: &str = "NERPOS_SKIP_LOG";

/// Records that `test` did not run and why: on stderr (shown by `cargo test -- --nocapture`) and in
/// the file named by `$NERPOS_SKIP_LOG`, which cargo's output capture does not swallow.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV)
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{test}\t{reason}");
    }
}

/// Records that `test` did not run because this machine's hardware lacks what it tests (a CPU
/// feature): listed at the end of `tests/run.sh` like any skip, but not a failure under
/// `NERPOS_NO_SKIPS=1` — no setup step can give a CPU an instruction set, and CI machines differ.
pub fn skip_hardware(test: &str, reason: &str) {
    eprintln!("SKIPPED {test} (hardware): {reason}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV)
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{test}\t{reason}\thardware");
    }
}

/// The reference Python environment (`.venv-ref`, made by `tests/reference/setup-venv.sh`) if it can
/// import `modules`; `None` (recorded as a skip of `test`) otherwise.
pub fn reference_python(test: &str, modules: &[&str], requirements: &str) -> Option<PathBuf> {
    let python = repo_root().join(".venv-ref/bin/python");
    let ok = python.is_file()
        && std::process::Command::new(&python)
            .args(["-c", &format!("import {}", modules.join(", "))])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        skip(
            test,
            &format!(
                "no Python with {} at {} (run tests/reference/setup-venv.sh {requirements})",
                modules.join(", "),
                python.display()
            ),
        );
    }
    ok.then_some(python)
}

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
        skip(
            test,
            "the GMB corpus is absent (looked for $NERPOS_GMB_CSV, data/ner_dataset.csv and \
             ../shared/data/ner_dataset.csv; see data/README.md)",
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
        skip(
            test,
            &format!(
                "no MiniLM checkpoint at {} (run data/fetch-minilm.sh)",
                dir.display()
            ),
        );
        None
    }
}
