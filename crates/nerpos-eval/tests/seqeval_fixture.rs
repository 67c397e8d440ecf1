//! Replays seqeval's own results (tests/fixtures/seqeval_cases.json, made by
//! tests/reference/eval_fixture.py with seqeval 1.2.2) and compares every number to 1e-9 and every
//! text table byte for byte.

use std::process::Command;

use nerpos_eval::tags::Prefix;
use nerpos_eval::{Mode, Report, Scheme, Scorer, Scores};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/seqeval_cases.json");

fn decode(legend: &[String], sentences: &Value) -> Vec<Vec<String>> {
    sentences
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap()
                .chars()
                .map(|c| legend[(c as u8 - b'a') as usize].clone())
                .collect()
        })
        .collect()
}

fn close(ours: f64, theirs: &Value, what: &str) {
    match theirs.as_f64() {
        None => assert!(ours.is_nan(), "{what}: seqeval nan, ours {ours}"),
        Some(t) => assert!((ours - t).abs() <= 1e-9, "{what}: seqeval {t}, ours {ours}"),
    }
}

fn compare(report: &Report, expected: &Value, name: &str) {
    let rows = expected["report"].as_object().unwrap();
    let check = |label: &str, s: &Scores, e: &Value| {
        close(
            s.precision,
            &e["precision"],
            &format!("{name} {label} precision"),
        );
        close(s.recall, &e["recall"], &format!("{name} {label} recall"));
        close(s.f1, &e["f1"], &format!("{name} {label} f1"));
        assert_eq!(
            s.support,
            e["support"].as_u64().unwrap(),
            "{name} {label} support"
        );
    };
    let types: Vec<&String> = rows.keys().filter(|k| !k.ends_with(" avg")).collect();
    let ours: Vec<&String> = report.per_type.keys().collect();
    assert_eq!(ours, types, "{name}: types");
    for (k, s) in &report.per_type {
        check(k, s, &rows[k]);
    }
    check("micro avg", &report.micro, &rows["micro avg"]);
    check("macro avg", &report.macro_avg, &rows["macro avg"]);
    check("weighted avg", &report.weighted, &rows["weighted avg"]);
    for (digits, key) in [(2, "text2"), (4, "text4")] {
        if let Some(text) = expected.get(key) {
            assert_eq!(
                report.to_seqeval_string(digits),
                text.as_str().unwrap(),
                "{name}: {key}"
            );
        }
    }
}

fn score(mode: Mode, gold: &[Vec<String>], pred: &[Vec<String>]) -> Report {
    let mut s = Scorer::new(mode);
    for (g, p) in gold.iter().zip(pred) {
        let g: Vec<&str> = g.iter().map(String::as_str).collect();
        let p: Vec<&str> = p.iter().map(String::as_str).collect();
        s.add(&g, &p).unwrap();
    }
    Report::new(&s.counts())
}

#[test]
fn every_seqeval_case_matches() {
    let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    let legend: Vec<String> = serde_json::from_value(fixture["legend"].clone()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(fixture["sequences"].as_u64().unwrap() >= 4000);
    let mut strict_cases = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let gold = decode(&legend, &case["true"]);
        let pred = decode(&legend, &case["pred"]);

        let report = score(Mode::Default, &gold, &pred);
        compare(&report, &case["default"], name);
        close(
            report.accuracy,
            &case["default"]["accuracy"],
            &format!("{name} accuracy"),
        );

        if let Some(strict) = case.get("strict") {
            let scheme = match strict["scheme"].as_str().unwrap() {
                "IOB2" => Scheme::Iob2,
                "IOBES" => Scheme::Iobes,
                "BILOU" => Scheme::Bilou,
                "auto" => {
                    let seen = gold.iter().flatten().fold(0u8, |acc, t| {
                        acc | Prefix::from_char(t.chars().next().unwrap()).unwrap().bits()
                    });
                    Scheme::detect(seen).expect("seqeval detected a scheme")
                }
                other => panic!("unknown scheme {other}"),
            };
            let report = score(Mode::Strict(scheme), &gold, &pred);
            compare(&report, strict, &format!("{name} strict"));
            strict_cases += 1;
        }
    }
    assert!(
        cases.len() >= 40 && strict_cases >= 40,
        "{} cases, {strict_cases} strict",
        cases.len()
    );
}

/// The CLI on a CoNLL file made from a fixture case prints seqeval's table.
#[test]
fn cli_prints_seqeval_table() {
    let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    let legend: Vec<String> = serde_json::from_value(fixture["legend"].clone()).unwrap();
    let case = &fixture["cases"][1];
    let gold = decode(&legend, &case["true"]);
    let pred = decode(&legend, &case["pred"]);
    let mut text = String::new();
    for (g, p) in gold.iter().zip(&pred) {
        if g.is_empty() {
            continue; // a CoNLL file cannot hold an empty sentence; it adds nothing to the counts
        }
        for (i, (a, b)) in g.iter().zip(p).enumerate() {
            text.push_str(&format!("w{i} NN {a} {b}\n"));
        }
        text.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pred.conll");
    std::fs::write(&path, &text).unwrap();
    let bin = env!("CARGO_BIN_EXE_nerpos-eval");
    for (args, key) in [(vec!["--digits", "4"], "text4"), (vec![], "text2")] {
        let o = Command::new(bin).arg(&path).args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8(o.stdout).unwrap();
        let expected = case["default"][key].as_str().unwrap();
        assert!(
            out.starts_with(expected),
            "ours:\n{out}\nseqeval:\n{expected}"
        );
    }
    let o = Command::new(bin)
        .arg(&path)
        .args(["--mode", "strict", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let expected = &case["strict"]["report"]["micro avg"]["f1"];
    assert!((v["micro"]["f1"].as_f64().unwrap() - expected.as_f64().unwrap()).abs() < 1e-12);
    for key in ["precision", "recall", "f1", "support"] {
        assert!(v["macro"].get(key).is_some() && v["weighted"].get(key).is_some());
    }
    assert!(v["accuracy"].as_f64().unwrap() > 0.0);
}

/// `--scheme iobes` / `--scheme bilou` alone score in strict mode: the CLI prints seqeval's strict
/// table for IOBES and BILOU files.
#[test]
fn cli_scheme_scores_like_seqeval_strict() {
    let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    let legend: Vec<String> = serde_json::from_value(fixture["legend"].clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_nerpos-eval");
    for (name, scheme) in [("iobes-1", "iobes"), ("bilou-1", "bilou")] {
        let case = fixture["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        assert_eq!(case["strict"]["scheme"], scheme.to_uppercase());
        let gold = decode(&legend, &case["true"]);
        let pred = decode(&legend, &case["pred"]);
        let mut text = String::new();
        for (g, p) in gold.iter().zip(&pred).filter(|(g, _)| !g.is_empty()) {
            for (i, (a, b)) in g.iter().zip(p).enumerate() {
                text.push_str(&format!("w{i} {a} {b}\n"));
            }
            text.push('\n');
        }
        let path = dir.path().join(format!("{scheme}.conll"));
        std::fs::write(&path, &text).unwrap();
        let o = Command::new(bin)
            .arg(&path)
            .args(["--scheme", scheme, "--digits", "4"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8(o.stdout).unwrap();
        let expected = case["strict"]["text4"].as_str().unwrap();
        assert!(
            out.starts_with(expected),
            "{name} ours:\n{out}\nseqeval:\n{expected}"
        );
        let o = Command::new(bin)
            .arg(&path)
            .args(["--scheme", scheme, "--mode", "default"])
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("--scheme applies to strict mode"));
    }
}
