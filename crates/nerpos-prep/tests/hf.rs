//! Hugging Face `datasets` corpora as `datasets` stores them (fixtures written by the `datasets`
//! package: tests/reference/hf_fixture.py): a save_to_disk DatasetDict and Parquet exports prepare into
//! the same dataset as the same sentences written as CoNLL files; bad records are refused by name.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use nerpos_prep::{Dataset, Row};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf")
}

fn split_args(dir: &Path, ext: &str) -> Vec<String> {
    ["train", "dev", "test"]
        .iter()
        .zip(["train", "validation", "test"])
        .flat_map(|(flag, file)| {
            [
                format!("--{flag}"),
                dir.join(format!("{file}.{ext}")).display().to_string(),
            ]
        })
        .collect()
}

fn prepare(format: &str, input: &[String], tok: &Path, out: &Path) -> Dataset {
    let mut args: Vec<&str> = vec!["--format", format, "--tokenizer", s(tok), "--out", s(out)];
    args.extend(input.iter().map(String::as_str));
    ok(&run(&args));
    Dataset::open(out).unwrap()
}

/// Everything but where each sentence came from (its id and first line or record in the source).
fn content(ds: &Dataset) -> Vec<Row> {
    all_rows(ds)
        .into_iter()
        .map(|r| Row {
            sentence_id: String::new(),
            source_line: 0,
            ..r
        })
        .collect()
}

#[test]
fn datasets_written_by_hugging_face_prepare_like_the_same_sentences_as_conll() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = write_bert_folder(tmp.path());
    let f = fixtures();
    let conll = prepare(
        "conll",
        &split_args(&f.join("conll"), "txt"),
        &tok,
        &tmp.path().join("c"),
    );
    let dict = fixtures().join("dict").display().to_string();
    let saved = prepare("hf", &["--input".into(), dict], &tok, &tmp.path().join("d"));
    let parquet = prepare(
        "hf",
        &split_args(&f.join("parquet"), "parquet"),
        &tok,
        &tmp.path().join("p"),
    );
    let want = content(&conll);
    assert_eq!(want.len(), 7);
    for ds in [&saved, &parquet] {
        assert_eq!(content(ds), want);
        let (a, b) = (&ds.manifest, &conll.manifest);
        assert_eq!(
            (&a.labels, &a.pos, a.has_pos),
            (&b.labels, &b.pos, b.has_pos)
        );
        for split in nerpos_prep::Split::ALL {
            assert_eq!(ds.rows(split), conll.rows(split), "{split}");
        }
    }
    // Provenance: the dataset's own ids, and records (0-based) instead of lines.
    let rows = all_rows(&saved);
    assert_eq!(
        (rows[1].sentence_id.as_str(), rows[1].source_line),
        ("1", 1)
    );
    let sources = &saved.manifest.files;
    assert_eq!(sources.len(), 3);
    assert!(
        sources[0].source.path.ends_with("dict/train"),
        "{sources:?}"
    );
}

#[test]
fn string_tags_need_no_names() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = write_bert_folder(tmp.path());
    let out = tmp.path().join("s");
    ok(&prep(
        &fixtures().join("strings.parquet"),
        "hf",
        &tok,
        &out,
        &[],
    ));
    let ds = Dataset::open(&out).unwrap();
    assert!(ds.manifest.has_pos);
    assert_eq!(ds.manifest.corpus.sentences, 4);
    // Without POS on request: --pos-key names another column.
    let out = tmp.path().join("n");
    let o = prep(
        &fixtures().join("strings.parquet"),
        "hf",
        &tok,
        &out,
        &["--pos-key", "upos"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no column \"upos\""),
        "{err}"
    );
}

#[test]
fn missing_names_and_short_lists_are_refused_by_record() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = write_bert_folder(tmp.path());
    let bad = fixtures().join("bad");
    let cases = [
        (
            "no-names.parquet",
            "no-names.parquet: record 0: key \"ner_tags\", item 0: integer id",
        ),
        (
            "short-tags.parquet",
            "short-tags.parquet: record 2: 3 item(s) under \"ner_tags\" for 4 token(s)",
        ),
    ];
    for (file, want) in cases {
        let out = tmp.path().join(file);
        let o = prep(&bad.join(file), "hf", &tok, &out, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{file}: {err}");
        assert!(!out.exists(), "{file}: no output after an error");
    }
    // Names given by hand make the first one readable.
    let names = tmp.path().join("names.txt");
    std::fs::write(&names, "O\nB-PER\nI-PER\nB-ORG\nI-ORG\nB-LOC\nI-LOC\n").unwrap();
    let out = tmp.path().join("named");
    let extra = ["--tag-names", s(&names)];
    ok(&prep(
        &bad.join("no-names.parquet"),
        "hf",
        &tok,
        &out,
        &extra,
    ));
}
