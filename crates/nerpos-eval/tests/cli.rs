//! The nerpos-eval command line: file modes, options and bad input.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_nerpos-eval");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn write(dir: &Path, name: &str, text: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

const ONE: &str = "EU NNP B-ORG B-ORG\nrejects VBZ O O\nGerman JJ B-MISC B-PER\n\nPeter NNP B-PER B-PER\nBlackburn NNP I-PER O\n";

#[test]
fn one_file_and_two_files_agree() {
    let dir = tempfile::tempdir().unwrap();
    let one = write(dir.path(), "one.conll", ONE.as_bytes());
    let gold = write(
        dir.path(),
        "gold.conll",
        b"EU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\nBlackburn I-PER\n",
    );
    let pred = write(
        dir.path(),
        "pred.conll",
        b"EU x B-ORG\nrejects x O\nGerman x B-PER\n\nPeter x B-PER\nBlackburn x O\n",
    );
    let a = run(&[&one, "--json"]);
    let b = run(&["--gold", &gold, "--pred", &pred, "--json"]);
    assert!(
        a.status.success() && b.status.success(),
        "{}",
        String::from_utf8_lossy(&b.stderr)
    );
    assert_eq!(a.stdout, b.stdout);
    let v: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(v["per_type"]["ORG"]["f1"], 1.0);
    assert_eq!(v["per_type"]["PER"]["support"], 1);
    assert_eq!(v["micro"]["precision"], 1.0 / 3.0);

    let o = run(&[&one, "--confusion"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("(missed)") && text.contains("(spurious)") && text.contains("token accuracy"),
        "{text}"
    );
}

#[test]
fn bad_input_names_file_line_and_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let gold = write(dir.path(), "gold.conll", b"a O\nb O\n\nc O\nd O\n");
    let pred = write(dir.path(), "pred.conll", b"a O\nb O\n\nc O\nx O\n");
    let o = run(&["--gold", &gold, "--pred", &pred]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("pred.conll:5:")
            && err.contains("sentence 2, word 2")
            && err.contains("gold.conll"),
        "{err}"
    );

    let short = write(dir.path(), "short.conll", b"a O\nb O\n\nc O\n");
    let o = run(&["--gold", &gold, "--pred", &short]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("short.conll:4:") && err.contains("sentence 2 has 1 tokens"),
        "{err}"
    );

    let narrow = write(dir.path(), "narrow.conll", b"a B-X O\nb\n");
    let o = run(&[&narrow]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("narrow.conll:2:") && err.contains("column"),
        "{err}"
    );

    let latin = write(dir.path(), "latin.conll", b"a O O\ncaf\xE9 O O\n");
    let o = run(&[&latin]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("latin.conll:2:") && err.contains("UTF-8"),
        "{err}"
    );

    let iobes = write(dir.path(), "iobes.conll", b"a B-X B-X\nb I-X S-X\n");
    let o = run(&[&iobes, "--mode", "strict", "--scheme", "iob2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("S-X")
            && err.contains("IOB2")
            && err.contains("iobes.conll:1"),
        "{err}"
    );

    let empty = write(dir.path(), "empty.conll", b"\n\n");
    let o = run(&[&empty]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no sentences"));
}

#[test]
fn odd_tags_warn_like_seqeval() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "odd.conll", b"a PER PER\nb O O\n");
    let o = run(&[&f]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("PER seems not to be an NE tag"));
}
