//! The full GMB corpus with the MiniLM tokenizer (skipped, with a message, when either is absent).

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

    // The shards hold what the manifest says.
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
