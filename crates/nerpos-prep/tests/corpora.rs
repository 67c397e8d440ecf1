//! Corpora as users have them: pre-split train/dev/test files, JSON Lines (string tags, integer ids
//! with names files), IOBES/BILOU tags, corpora without POS tags. Every test writes its own corpus.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use nerpos_prep::manifest::{Manifest, Split};
use nerpos_prep::{Columns, Dataset, Part, Row};
use sha2::{Digest, Sha256};

/// (word, POS, IOB2 tag)
type Sentence = Vec<(&'static str, &'static str, &'static str)>;

/// A small corpus in three files. PER occurs only in test (the label vocabulary must still have it);
/// the POS tags TO and XX only in dev (they are not in the POS vocabulary and count as unknown).
fn corpus() -> [Vec<Sentence>; 3] {
    [
        vec![
            vec![
                ("the", "DT", "O"),
                ("new", "JJ", "B-ORG"),
                ("york", "NNP", "I-ORG"),
                ("troops", "NNS", "I-ORG"),
                ("marched", "VBD", "O"),
            ],
            vec![
                ("paris", "NNP", "B-LOC"),
                ("is", "VBZ", "O"),
                ("in", "IN", "O"),
                ("war", "NN", "O"),
            ],
            vec![
                ("london", "NNP", "B-LOC"),
                ("and", "CC", "O"),
                ("paris", "NNP", "B-LOC"),
                (".", ".", "O"),
            ],
        ],
        vec![
            vec![
                ("british", "JJ", "B-ORG"),
                ("demonstrators", "NNS", "O"),
                ("marched", "VBD", "O"),
                ("to", "TO", "O"),
                ("iraq", "NNP", "B-LOC"),
            ],
            vec![("a", "DT", "O"), ("protest", "XX", "O")],
        ],
        vec![
            vec![("new", "NNP", "B-PER"), ("york", "NNP", "I-PER")],
            vec![
                ("the", "DT", "O"),
                ("war", "NN", "O"),
                ("of", "IN", "O"),
                ("iraq", "NNP", "B-LOC"),
            ],
        ],
    ]
}

#[derive(Clone, Copy, PartialEq)]
enum Scheme {
    Iob2,
    Iobes,
    Bilou,
}

/// A well-formed IOB2 sentence's tags in another scheme.
fn convert(tags: &[&str], scheme: Scheme) -> Vec<String> {
    let (end, single) = match scheme {
        Scheme::Iob2 => return tags.iter().map(|t| t.to_string()).collect(),
        Scheme::Iobes => ("E", "S"),
        Scheme::Bilou => ("L", "U"),
    };
    (0..tags.len())
        .map(|i| {
            let Some((prefix, ty)) = tags[i].split_once('-') else {
                return "O".to_string();
            };
            let continued = tags.get(i + 1) == Some(&format!("I-{ty}").as_str());
            let p = match (prefix, continued) {
                ("B", false) => single,
                ("B", true) => "B",
                ("I", true) => "I",
                _ => end,
            };
            format!("{p}-{ty}")
        })
        .collect()
}

/// CoNLL-2003 columns (word POS chunk NER), or `word NER` without POS.
fn conll(sentences: &[Sentence], scheme: Scheme, pos: bool) -> String {
    let mut out = String::from("-DOCSTART- -X- -X- O\n\n");
    for s in sentences {
        let tags: Vec<&str> = s.iter().map(|t| t.2).collect();
        for ((w, p, _), t) in s.iter().zip(convert(&tags, scheme)) {
            if pos {
                out.push_str(&format!("{w} {p} _ {t}\n"));
            } else {
                out.push_str(&format!("{w} {t}\n"));
            }
        }
        out.push('\n');
    }
    out
}

const TAG_NAMES: [&str; 7] = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"];
const POS_NAMES: [&str; 12] = [
    "\"", ".", "CC", "DT", "IN", "JJ", "NN", "NNP", "NNS", "TO", "VBD", "VBZ",
];

/// JSON Lines as `datasets`' `to_json` writes them; tags (and POS) as strings or as integer ids.
fn jsonl(sentences: &[Sentence], ids: bool, pos: bool) -> String {
    let mut pos_names = POS_NAMES.to_vec();
    pos_names.push("XX");
    let id = |names: &[&str], t: &str| names.iter().position(|n| *n == t).unwrap();
    let mut out = String::new();
    for (k, s) in sentences.iter().enumerate() {
        let mut obj = serde_json::json!({
            "id": k.to_string(),
            "tokens": s.iter().map(|t| t.0).collect::<Vec<_>>(),
        });
        obj["ner_tags"] = if ids {
            serde_json::json!(s.iter().map(|t| id(&TAG_NAMES, t.2)).collect::<Vec<_>>())
        } else {
            serde_json::json!(s.iter().map(|t| t.2).collect::<Vec<_>>())
        };
        if pos {
            obj["pos_tags"] = if ids {
                serde_json::json!(s.iter().map(|t| id(&pos_names, t.1)).collect::<Vec<_>>())
            } else {
                serde_json::json!(s.iter().map(|t| t.1).collect::<Vec<_>>())
            };
        }
        out.push_str(&obj.to_string());
        out.push('\n');
    }
    out
}

/// Writes the three files with `render` and returns their paths.
fn write3(dir: &Path, ext: &str, render: impl Fn(&[Sentence]) -> String) -> [PathBuf; 3] {
    let c = corpus();
    ["train", "dev", "test"].map(|name| {
        let k = ["train", "dev", "test"]
            .iter()
            .position(|n| *n == name)
            .unwrap();
        let p = dir.join(format!("{name}.{ext}"));
        std::fs::write(&p, render(&c[k])).unwrap();
        p
    })
}

fn prep3(files: &[PathBuf; 3], format: &str, tok: &Path, out: &Path, extra: &[&str]) -> Output3 {
    let mut args = vec![
        "--format",
        format,
        "--train",
        s(&files[0]),
        "--dev",
        s(&files[1]),
        "--test",
        s(&files[2]),
        "--tokenizer",
        s(tok),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    ok(&o);
    Output3 {
        ds: Dataset::open(out).unwrap(),
    }
}

struct Output3 {
    ds: Dataset,
}

/// Each split's rows in order, without the fields that say where a row came from.
fn contents(ds: &Dataset) -> Vec<Vec<Row>> {
    Split::ALL
        .iter()
        .map(|&sp| {
            let mut rows = ds.read_all(sp, Part::WHOLE, Columns::All).unwrap();
            rows.sort_by_key(|r| (r.sentence_index, r.window));
            for r in &mut rows {
                r.sentence_id.clear();
                r.source_line = 0;
            }
            rows
        })
        .collect()
}

fn words_of(rows: &[Row]) -> Vec<Vec<String>> {
    rows.iter().map(|r| r.words.clone()).collect()
}

#[test]
fn three_files_keep_their_splits_and_vocabularies() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = write_bert_folder(tmp.path());
    let files = write3(tmp.path(), "conll", |c| conll(c, Scheme::Iob2, true));
    let a = prep3(&files, "conll", &tok, &tmp.path().join("a"), &[]).ds;
    let m: &Manifest = &a.manifest;
    let c = corpus();
    let rows = contents(&a);
    for (k, split) in Split::ALL.iter().enumerate() {
        assert_eq!(m.splits.get(*split).sentences, c[k].len(), "{split:?}");
        let want: Vec<Vec<String>> = c[k]
            .iter()
            .map(|s| s.iter().map(|t| t.0.to_string()).collect())
            .collect();
        assert_eq!(
            words_of(&rows[k]),
            want,
            "{split:?}: sentences in file order"
        );
    }
    assert_eq!(
        m.labels,
        ["B-LOC", "B-ORG", "B-PER", "I-ORG", "I-PER", "O"],
        "labels of all files"
    );
    assert_eq!(
        m.pos,
        [
            "<pad>", "<unk>", ".", "CC", "DT", "IN", "JJ", "NN", "NNP", "NNS", "VBD", "VBZ"
        ],
        "POS of the training file only"
    );
    assert_eq!(
        m.splits.dev.unknown_pos, 2,
        "TO and XX are unseen in training"
    );
    assert_eq!(m.splits.test.unknown_pos, 0);
    check_source_files(m, &files);

    // Same flags, same bytes.
    let b = tmp.path().join("b");
    prep3(&files, "conll", &tok, &b, &[]);
    assert_eq!(common::files(&tmp.path().join("a")), common::files(&b));
    a_training_file_alone(tmp.path(), &files[0], &tok);
}

/// Every file read, with its split, size and checksum; no split fractions.
fn check_source_files(m: &Manifest, files: &[PathBuf]) {
    assert_eq!(m.options.split, None);
    assert_eq!(m.files.len(), 3);
    for ((f, path), split) in m.files.iter().zip(files).zip(Split::ALL) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(f.split, Some(split));
        assert_eq!(f.source.bytes, bytes.len() as u64);
        assert_eq!(f.source.sha256, format!("{:x}", Sha256::digest(&bytes)));
        assert!(
            f.source
                .path
                .ends_with(path.file_name().unwrap().to_str().unwrap())
        );
    }
}

/// A training file alone: empty dev and test; --split makes no sense with --train.
fn a_training_file_alone(dir: &Path, train: &Path, tok: &Path) {
    let only = dir.join("only");
    ok(&run(&[
        "--format",
        "conll",
        "--train",
        s(train),
        "--tokenizer",
        s(tok),
        "--out",
        s(&only),
    ]));
    let m = Dataset::open(&only).unwrap().manifest;
    assert_eq!(
        (
            m.splits.train.sentences,
            m.splits.dev.sentences,
            m.splits.test.sentences
        ),
        (3, 0, 0)
    );
    let o = run(&[
        "--format",
        "conll",
        "--train",
        s(train),
        "--split",
        "0.8,0.1,0.1",
        "--tokenizer",
        s(tok),
        "--out",
        s(&dir.join("x")),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--split"));
    assert!(!dir.join("x").exists());
}

#[test]
fn json_lines_with_string_and_integer_tags_equal_conll() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = write_bert_folder(tmp.path());
    let conll_files = write3(tmp.path(), "conll", |c| conll(c, Scheme::Iob2, true));
    let reference = prep3(&conll_files, "conll", &tok, &tmp.path().join("conll"), &[]).ds;

    let strings = write3(tmp.path(), "s.jsonl", |c| jsonl(c, false, true));
    let from_strings = prep3(
        &strings,
        "jsonl",
        &tok,
        &tmp.path().join("s"),
        &["--pos-key", "pos_tags"],
    )
    .ds;

    let ids = write3(tmp.path(), "i.jsonl", |c| jsonl(c, true, true));
    let tag_names = tmp.path().join("tags.txt");
    std::fs::write(&tag_names, TAG_NAMES.join("\n") + "\n").unwrap();
    let pos_names = tmp.path().join("pos.txt");
    std::fs::write(&pos_names, POS_NAMES.join("\n") + "\nXX\n").unwrap();
    let from_ids = prep3(
        &ids,
        "jsonl",
        &tok,
        &tmp.path().join("i"),
        &[
            "--pos-key",
            "pos_tags",
            "--tag-names",
            s(&tag_names),
            "--pos-names",
            s(&pos_names),
        ],
    )
    .ds;

    for (what, ds) in [("string tags", &from_strings), ("integer ids", &from_ids)] {
        assert_eq!(ds.manifest.labels, reference.manifest.labels, "{what}");
        assert_eq!(ds.manifest.pos, reference.manifest.pos, "{what}");
        assert_eq!(ds.manifest.splits.dev.unknown_pos, 2, "{what}");
        assert_eq!(contents(ds), contents(&reference), "{what}");
    }
}

#[test]
fn iobes_and_bilou_give_the_same_iob2_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = write_bert_folder(tmp.path());
    let iob2 = write3(tmp.path(), "iob2", |c| conll(c, Scheme::Iob2, true));
    let reference = prep3(&iob2, "conll", &tok, &tmp.path().join("iob2-out"), &[]).ds;
    for (name, scheme) in [("iobes", Scheme::Iobes), ("bilou", Scheme::Bilou)] {
        let files = write3(tmp.path(), name, |c| conll(c, scheme, true));
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(text.contains(if name == "iobes" { "E-ORG" } else { "L-ORG" }));
        let out = tmp.path().join(format!("{name}-out"));
        let ds = prep3(&files, "conll", &tok, &out, &["--scheme", name]).ds;
        assert_eq!(ds.manifest.labels, reference.manifest.labels, "{name}");
        assert_eq!(contents(&ds), contents(&reference), "{name}");
        assert_eq!(ds.manifest.corpus.scheme_violations, 0, "{name}");
        assert_eq!(ds.manifest.options.scheme.name(), name);
    }
}

#[test]
fn scheme_violations_are_counted_and_located() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = write_bert_folder(tmp.path());
    // Line 5: an I-LOC that continues nothing (IOB2); below, a B-LOC never closed (IOBES).
    let iob2 = tmp.path().join("v.iob2");
    std::fs::write(
        &iob2,
        "paris NNP _ B-LOC\nis VBZ _ O\n\nin IN _ O\nlondon NNP _ I-LOC\n",
    )
    .unwrap();
    let out = tmp.path().join("v");
    let o = prep(&iob2, "conll", &tok, &out, &["--split", "1,0,0"]);
    ok(&o);
    let ds = Dataset::open(&out).unwrap();
    let c = &ds.manifest.corpus;
    let at = format!("{}:5", iob2.canonicalize().unwrap().display());
    assert_eq!(c.scheme_violations, 1);
    assert!(
        c.first_violation.as_deref().unwrap().ends_with("v.iob2:5"),
        "{:?} (want {at})",
        c.first_violation
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("violations=1") && err.contains("v.iob2:5"),
        "{err}"
    );
    assert!(err.contains("--scheme iob1"), "{err}");
    let rows = all_rows(&ds);
    assert_eq!(rows[1].tags, ["O", "O"], "read as seqeval strict reads it");

    let iobes = tmp.path().join("v.iobes");
    std::fs::write(
        &iobes,
        "new NNP _ B-ORG\nyork NNP _ E-ORG\n\nparis NNP _ B-LOC\nis VBZ _ O\n",
    )
    .unwrap();
    let out = tmp.path().join("v2");
    ok(&prep(
        &iobes,
        "conll",
        &tok,
        &out,
        &["--split", "1,0,0", "--scheme", "iobes"],
    ));
    let ds = Dataset::open(&out).unwrap();
    assert_eq!(ds.manifest.corpus.scheme_violations, 1);
    assert!(
        ds.manifest
            .corpus
            .first_violation
            .as_deref()
            .unwrap()
            .ends_with("v.iobes:4")
    );
    let rows = all_rows(&ds);
    assert_eq!(rows[0].tags, ["B-ORG", "I-ORG"]);
    assert_eq!(rows[1].tags, ["O", "O"]);

    // A prefix the stated scheme does not have is an error naming the file and line.
    let out = tmp.path().join("v3");
    let o = prep(&iobes, "conll", &tok, &out, &["--split", "1,0,0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("v.iobes:2") && err.contains("E-ORG") && err.contains("iob2"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn bad_json_lines_are_refused_with_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = write_bert_folder(tmp.path());
    let names = tmp.path().join("names.txt");
    std::fs::write(&names, "O\nB-PER\nI-PER\n").unwrap();
    let good = r#"{"tokens": ["paris"], "ner_tags": ["B-LOC"]}"#;
    let cases: Vec<(&str, String, &[&str], Vec<&str>)> =
        vec![
        ("bad json", format!("{good}\n{{\"tokens\": [\n"), &[":2:", "not valid JSON"], vec![]),
        (
            "missing key",
            format!("{good}\n{{\"words\": [\"a\"], \"ner_tags\": [\"O\"]}}\n"),
            &[":2:", "\"tokens\""],
            vec![],
        ),
        (
            "length mismatch",
            "{\"tokens\": [\"a\", \"b\"], \"ner_tags\": [\"O\"]}\n".to_string(),
            &[":1:", "\"ner_tags\"", "2 token(s)"],
            vec![],
        ),
        (
            "id outside names",
            "{\"tokens\": [\"a\"], \"ner_tags\": [0]}\n{\"tokens\": [\"b\"], \"ner_tags\": [3]}\n"
                .to_string(),
            &[":2:", "\"ner_tags\"", "id 3"],
            vec!["--tag-names", s(&names)],
        ),
        (
            "pos key missing",
            format!("{good}\n"),
            &[":1:", "\"pos_tags\""],
            vec!["--pos-key", "pos_tags"],
        ),
        (
            "bad tag",
            "{\"tokens\": [\"a\"], \"ner_tags\": [\"PER\"]}\n".to_string(),
            &[":1:", "invalid tag"],
            vec![],
        ),
    ];
    for (what, text, wants, extra) in cases {
        let input = tmp.path().join(format!("{}.jsonl", what.replace(' ', "_")));
        std::fs::write(&input, text).unwrap();
        let out = tmp.path().join("out");
        let mut args = vec!["--split", "1,0,0"];
        args.extend(extra);
        let o = prep(&input, "jsonl", &tok, &out, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: succeeded");
        assert!(err.contains(s(&input)), "{what}: file not named: {err}");
        for w in wants {
            assert!(err.contains(w), "{what}: {w:?} not in: {err}");
        }
        assert!(!out.exists(), "{what}: output left behind");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
    // JSON Lines flags on another format are refused, not ignored.
    let conll = tmp.path().join("c.conll");
    std::fs::write(&conll, "a DT _ O\n").unwrap();
    let o = prep(
        &conll,
        "conll",
        &tok,
        &tmp.path().join("o2"),
        &["--pos-key", "pos"],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--pos-key applies to --format jsonl"));
}

#[test]
fn corpora_without_pos() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = write_bert_folder(tmp.path());
    let conll_files = write3(tmp.path(), "conll", |c| conll(c, Scheme::Iob2, false));
    let a = prep3(
        &conll_files,
        "conll",
        &tok,
        &tmp.path().join("a"),
        &["--pos-col", "none", "--tag-col", "1"],
    )
    .ds;
    let jsonl_files = write3(tmp.path(), "jsonl", |c| jsonl(c, false, false));
    let b = prep3(&jsonl_files, "jsonl", &tok, &tmp.path().join("b"), &[]).ds;
    for ds in [&a, &b] {
        let m = &ds.manifest;
        assert!(!m.has_pos);
        assert_eq!(m.pos, ["<pad>", "<unk>"]);
        assert_eq!(m.corpus.pos_tags, 0);
        assert_eq!(
            m.splits.dev.unknown_pos, 0,
            "nothing unknown when there is nothing"
        );
        for rows in contents(ds) {
            for r in rows {
                assert!(
                    r.pos_ids
                        .iter()
                        .zip(&r.labels)
                        .all(|(&p, &l)| p == m.pos_unk_id || (l == -100 && p == m.pos_pad_id))
                );
            }
        }
    }
    assert_eq!(contents(&a), contents(&b));
    let o = run(&["inspect", s(&tmp.path().join("a"))]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("no POS"));
}
