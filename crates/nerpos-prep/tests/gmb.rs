//! The full GMB corpus with the MiniLM tokenizer (skipped, with a message, when either is absent).

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use nerpos_prep::manifest::{IGNORE_LABEL, Split};
use nerpos_prep::{Columns, Dataset, Part};

const BIN: &str = env!("CARGO_BIN_EXE_nerpos-prep");

/// Sub-words including [CLS]/[SEP], one sequence per sentence, as counted by the Hugging Face fast
/// tokenizer on the same words (Windows-1252 decoding): `tests/reference/prep_reference.py` prints it
/// as `subwords_with_specials`.
const HF_SUBWORDS_WITH_SPECIALS: usize = 1_272_830;

#[test]
fn full_gmb_corpus_counts_and_determinism() {
    let (Some(csv), Some(minilm)) = (
        nerpos_testdata::gmb_csv("full_gmb_corpus_counts_and_determinism"),
        nerpos_testdata::minilm("full_gmb_corpus_counts_and_determinism"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = |out: &str| {
        let o = Command::new(BIN)
            .args(["--format", "gmb", "--input"])
            .arg(&csv)
            .arg("--tokenizer")
            .arg(&minilm)
            .arg("--out")
            .arg(tmp.path().join(out))
            .env("NERPOS_LOG", "warn")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Dataset::open(&tmp.path().join(out)).unwrap()
    };
    let ds = run("a");
    let m = &ds.manifest;
    assert_eq!(m.source.encoding, "windows-1252");
    assert_eq!(m.corpus.sentences, 47_959);
    assert_eq!(m.corpus.words, 1_048_575);
    assert_eq!(m.corpus.tags, 17);
    assert_eq!(m.corpus.pos_tags, 42);
    assert_eq!(m.labels.len(), 17);
    assert_eq!(m.corpus.longest_sentence_words, 104);
    assert_eq!(
        m.corpus.words_without_subwords, 0,
        "Windows-1252 decoding loses no word"
    );
    assert_eq!(m.corpus.truncated_words, 0);
    check_split_counts(m);
    check_shards(&ds);

    // Same flags, byte-identical output.
    let again = run("b");
    for split in Split::ALL {
        for (x, y) in m
            .splits
            .get(split)
            .shards
            .iter()
            .zip(&again.manifest.splits.get(split).shards)
        {
            let a = std::fs::read(ds.dir.join(&x.file)).unwrap();
            let b = std::fs::read(again.dir.join(&y.file)).unwrap();
            assert!(a == b, "{} differs between runs", x.file);
        }
    }
    let ma = std::fs::read(ds.dir.join("manifest.json")).unwrap();
    let mb = std::fs::read(again.dir.join("manifest.json")).unwrap();
    assert_eq!(ma, mb);
}

/// The splits' counts add up to the corpus's (sub-words: Hugging Face's count).
fn check_split_counts(m: &nerpos_prep::Manifest) {
    let splits: Vec<_> = Split::ALL.iter().map(|&s| m.splits.get(s)).collect();
    let sum = |f: fn(&nerpos_prep::manifest::SplitInfo) -> usize| {
        splits.iter().map(|s| f(s)).sum::<usize>()
    };
    assert_eq!(sum(|s| s.sentences), 47_959);
    assert_eq!(sum(|s| s.words), 1_048_575);
    assert_eq!(sum(|s| s.labelled), 1_048_575, "labelled sub-words = words");
    assert_eq!(sum(|s| s.subwords) + 2 * 47_959, HF_SUBWORDS_WITH_SPECIALS);
    assert_eq!(
        sum(|s| s.windowed_sentences),
        1,
        "one sentence is longer than 128 sub-words"
    );
    assert_eq!(m.splits.train.sentences, 38_367);
}

/// The shards hold what the manifest says.
fn check_shards(ds: &Dataset) {
    ds.verify().unwrap();
    let (mut rows, mut labelled, mut none_words) = (0, 0, 0);
    for split in Split::ALL {
        for batch in ds.reader(split, Part::WHOLE, 4096, Columns::All).unwrap() {
            for row in batch.unwrap() {
                rows += 1;
                labelled += row.labels.iter().filter(|&&l| l != IGNORE_LABEL).count();
                none_words += row.words.iter().filter(|w| *w == "None").count();
                assert!(row.input_ids.len() <= 128);
            }
        }
    }
    assert_eq!(rows, 47_960);
    assert_eq!(labelled, 1_048_575);
    assert_eq!(
        none_words, 10,
        "the word None is a word, not a missing value"
    );
}

/// The random split of the corpus written back as three CoNLL files (train, dev, test), prepared with
/// `--train/--dev/--test`: the same rows, label and POS vocabularies and unknown-POS counts.
#[test]
fn its_splits_as_three_conll_files_give_the_same_dataset() {
    let (Some(csv), Some(minilm)) = (
        nerpos_testdata::gmb_csv("its_splits_as_three_conll_files_give_the_same_dataset"),
        nerpos_testdata::minilm("its_splits_as_three_conll_files_give_the_same_dataset"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: Vec<OsString>| {
        let o = Command::new(BIN)
            .args(args)
            .arg("--tokenizer")
            .arg(&minilm)
            .env("NERPOS_LOG", "warn")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let a = tmp.path().join("a");
    run(args(
        &["--format", "gmb", "--input"],
        &[&csv, Path::new("--out"), &a],
    ));
    let a = Dataset::open(&a).unwrap();

    let mut files = Vec::new();
    for split in Split::ALL {
        let rows = a.read_all(split, Part::WHOLE, Columns::All).unwrap();
        let mut text = String::new();
        for (k, row) in rows.iter().enumerate() {
            // Windows do not overlap: a sentence's windows' words, in order, are its words.
            for ((w, p), t) in row.words.iter().zip(&row.pos).zip(&row.tags) {
                // CoNLL columns split at ASCII whitespace only (GMB has no-break spaces inside words).
                assert!(!w.contains(|c: char| c.is_ascii_whitespace()), "word {w:?}");
                text.push_str(&format!("{w} {p} {t}\n"));
            }
            let last_window = rows
                .get(k + 1)
                .is_none_or(|n| n.sentence_index != row.sentence_index);
            if last_window {
                text.push('\n');
            }
        }
        let path = tmp.path().join(split.name());
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    let b = tmp.path().join("b");
    let [train, dev, test] = &files[..] else {
        unreachable!("three splits")
    };
    let rest: [&Path; 7] = [
        Path::new("--train"),
        train,
        Path::new("--dev"),
        dev,
        Path::new("--test"),
        test,
        Path::new("--out"),
    ];
    let mut b_args = args(&["--format", "conll", "--tag-col", "2"], &rest);
    b_args.push(b.clone().into());
    run(b_args);
    let b = Dataset::open(&b).unwrap();

    let (ma, mb) = (&a.manifest, &b.manifest);
    assert_eq!(ma.labels, mb.labels);
    assert_eq!(ma.pos, mb.pos);
    for split in Split::ALL {
        let (x, y) = (ma.splits.get(split), mb.splits.get(split));
        assert_eq!(
            (x.sentences, x.words, x.tokens, x.unknown_pos),
            (y.sentences, y.words, y.tokens, y.unknown_pos),
            "{split:?}"
        );
        let ids = |ds: &Dataset| -> Vec<(Vec<u32>, Vec<i32>, Vec<u32>)> {
            ds.read_all(split, Part::WHOLE, Columns::All)
                .unwrap()
                .into_iter()
                .map(|r| (r.input_ids, r.labels, r.pos_ids))
                .collect()
        };
        assert!(ids(&a) == ids(&b), "{split:?}: rows differ");
    }
}

/// Command-line arguments: flags, then paths.
fn args(flags: &[&str], paths: &[&Path]) -> Vec<OsString> {
    flags
        .iter()
        .map(OsString::from)
        .chain(paths.iter().map(|p| p.as_os_str().to_owned()))
        .collect()
}
