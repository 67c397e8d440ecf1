//! Helpers shared by the end-to-end tests of `nerpos-prep`.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nerpos_prep::manifest::Split;
use nerpos_prep::{Columns, Dataset, Part, Row};

pub const BIN: &str = env!("CARGO_BIN_EXE_nerpos-prep");

/// A tiny uncased WordPiece vocabulary: enough pieces that some words split into several.
pub const VOCAB: &[&str] = &[
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "of",
    "in",
    "to",
    "and",
    "a",
    ",",
    ".",
    "\"",
    "-",
    "'",
    "’",
    "…",
    "thousands",
    "demonstrators",
    "have",
    "marched",
    "through",
    "london",
    "protest",
    "war",
    "iraq",
    "paris",
    "new",
    "york",
    "is",
    "10",
    "000",
    "##s",
    "mar",
    "##ched",
    "de",
    "##mon",
    "##stra",
    "##tor",
    "cafe",
    "é",
    "caf",
    "##é",
    "none",
    "british",
    "troops",
];

pub fn write_bert_folder(dir: &Path) -> PathBuf {
    let tok = dir.join("tok");
    std::fs::create_dir_all(&tok).unwrap();
    std::fs::write(tok.join("vocab.txt"), VOCAB.join("\n") + "\n").unwrap();
    std::fs::write(
        tok.join("tokenizer_config.json"),
        r#"{"do_lower_case": true}"#,
    )
    .unwrap();
    tok
}

/// The same tokenizer serialised as tokenizer.json (as a checkpoint from the Hub would ship it).
pub fn write_json_folder(dir: &Path) -> PathBuf {
    let vocab_dir = write_bert_folder(dir);
    let loaded = nerpos_prep::SubwordTokenizer::load(&vocab_dir).unwrap();
    let json_dir = dir.join("tokjson");
    std::fs::create_dir_all(&json_dir).unwrap();
    loaded
        .inner()
        .save(json_dir.join("tokenizer.json"), false)
        .unwrap();
    json_dir
}

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("NERPOS_LOG", "warn")
        .output()
        .expect("runs nerpos-prep")
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn prep(input: &Path, format: &str, tok: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--format",
        format,
        "--input",
        s(input),
        "--tokenizer",
        s(tok),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

pub fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "nerpos-prep failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn all_rows(ds: &Dataset) -> Vec<Row> {
    let mut rows: Vec<Row> = Split::ALL
        .iter()
        .flat_map(|&sp| ds.read_all(sp, Part::WHOLE, Columns::All).unwrap())
        .collect();
    rows.sort_by_key(|r| (r.sentence_index, r.window));
    rows
}

pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in walk(dir) {
        let rel = entry.strip_prefix(dir).unwrap().display().to_string();
        out.insert(rel, std::fs::read(&entry).unwrap());
    }
    out
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
