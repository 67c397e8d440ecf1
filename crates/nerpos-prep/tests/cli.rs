//! End-to-end tests of the `nerpos-prep` binary on small corpora the tests write themselves.

mod common;

use common::*;
use nerpos_prep::manifest::Split;
use nerpos_prep::{Columns, Dataset, Part, Row};

/// Windows-1252 GMB CSV with CRLF line ends, quoted fields, a curly quote (0x92), an ellipsis
/// (0x85), e-acute (0xE9), the word None, and a soft hyphen (0xAD) word the tokenizer deletes.
fn gmb_bytes() -> Vec<u8> {
    let mut b: Vec<u8> = Vec::new();
    let rows: &[&[u8]] = &[
        b"Sentence #,Word,POS,Tag",
        b"Sentence: 1,Thousands,NNS,O",
        b",of,IN,O",
        b",demonstrators,NNS,O",
        b",marched,VBN,O",
        b",through,IN,O",
        b",London,NNP,B-geo",
        b",\"10,000\",CD,O",
        b",\",\",\",\",O",
        b",\"\"\"\",``,O",
        b",.,.,O",
        b"Sentence: 2,New,NNP,B-geo",
        b",York,NNP,I-geo",
        b",is,VBZ,O",
        b",caf\xE9,NN,B-art",
        b",None,NN,O",
        b",\x92s,POS,O",
        b",\x85,:,O",
        b",\xAD,NN,O",
        b"Sentence: 3,British,JJ,B-gpe",
        b",troops,NNS,O",
        b",marched,VBD,O",
        b",to,TO,O",
        b",Paris,NNP,B-geo",
        b",in,IN,O",
        b",Iraq,NNP,B-geo",
        b",.,.,O",
        b"Sentence: 4,The,DT,O",
        b",war,NN,O",
        b",protests,NN,B-eve",
        b",.,.,O",
    ];
    for r in rows {
        b.extend_from_slice(r);
        b.extend_from_slice(b"\r\n");
    }
    b
}

/// The same corpus as CoNLL-2003 columns (word POS chunk NER), UTF-8.
fn conll_text() -> String {
    let gmb = encoding_free_gmb();
    let mut out = String::from("-DOCSTART- -X- -X- O\n\n");
    for sentence in gmb {
        for (w, p, t) in sentence {
            out.push_str(&format!("{w} {p} _ {t}\n"));
        }
        out.push('\n');
    }
    out
}

fn encoding_free_gmb() -> Vec<Vec<(String, String, String)>> {
    let text: String = gmb_bytes()
        .iter()
        .map(|&b| match b {
            0x92 => '\u{2019}',
            0x85 => '\u{2026}',
            0xE9 => 'é',
            0xAD => '\u{AD}',
            b => b as char,
        })
        .collect();
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let mut sentences: Vec<Vec<(String, String, String)>> = Vec::new();
    for rec in reader.records() {
        let rec = rec.unwrap();
        if !rec[0].is_empty() {
            sentences.push(Vec::new());
        }
        let word = rec[1].replace(' ', "_");
        sentences
            .last_mut()
            .unwrap()
            .push((word, rec[2].to_string(), rec[3].to_string()));
    }
    sentences
}

/// The small vocabulary's tokenizer folder and the GMB file of [`gmb_bytes`], in `dir`.
fn gmb_corpus(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let tok = write_bert_folder(dir);
    let input = dir.join("gmb.csv");
    std::fs::write(&input, gmb_bytes()).unwrap();
    (tok, input)
}

#[test]
fn gmb_end_to_end_alignment_and_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let (tok, input) = gmb_corpus(tmp.path());
    let out = tmp.path().join("ds");
    let o = prep(&input, "gmb", &tok, &out, &["--split", "1,0,0"]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("train"));

    let ds = Dataset::open(&out).unwrap();
    ds.verify().unwrap();
    let m = &ds.manifest;
    assert_eq!(m.source.encoding, "windows-1252");
    assert_eq!(m.corpus.sentences, 4);
    assert_eq!(m.corpus.words, 30);
    assert_eq!(m.corpus.tags, 6);
    assert_eq!(
        m.corpus.words_without_subwords, 1,
        "the soft-hyphen word becomes [UNK]"
    );
    assert_eq!(m.labels, ["B-art", "B-eve", "B-geo", "B-gpe", "I-geo", "O"]);
    assert_eq!(&m.pos[..2], ["<pad>", "<unk>"]);
    assert_eq!(m.splits.train.labelled, 30);
    assert_eq!(m.splits.train.words, 30);

    let rows = all_rows(&ds);
    assert_eq!(rows.len(), 4);
    check_first_gmb_row(m, &rows[0]);
    check_other_gmb_rows(&rows);
    check_ranks_partition_rows(&ds);
}

/// "10,000" is one word of three pieces, labelled on its first; POS on every sub-word.
fn check_first_gmb_row(m: &nerpos_prep::Manifest, r: &Row) {
    assert_eq!(r.sentence_id, "Sentence: 1");
    assert_eq!(r.source_line, 2);
    let id = |t: &str| VOCAB.iter().position(|v| *v == t).unwrap() as u32;
    let expected: Vec<u32> = [
        "[CLS]",
        "thousands",
        "of",
        "demonstrators",
        "marched",
        "through",
        "london",
        "10",
        ",",
        "000",
        ",",
        "\"",
        ".",
        "[SEP]",
    ]
    .iter()
    .map(|t| id(t))
    .collect();
    // "10,000" is one word of three pieces (BERT splits punctuation inside a word): 10 , 000.
    assert_eq!(r.input_ids, expected);
    let geo = m.labels.iter().position(|l| l == "B-geo").unwrap() as i32;
    let o = m.labels.iter().position(|l| l == "O").unwrap() as i32;
    assert_eq!(
        r.labels,
        [-100, o, o, o, o, o, geo, o, -100, -100, o, o, o, -100]
    );
    assert_eq!(r.word_ids, [-1, 0, 1, 2, 3, 4, 5, 6, 6, 6, 7, 8, 9, -1]);
    assert_eq!(r.words[6], "10,000");
    assert_eq!(r.words[7], ",");
    assert_eq!(r.words[8], "\"");
    let nn_pos = |row: &Row, w: usize| {
        row.pos_ids[row.word_ids.iter().position(|&x| x == w as i32).unwrap()]
    };
    assert_eq!(m.pos[nn_pos(r, 6) as usize], "CD");
    assert_eq!(r.pos_ids[0], 0);
    assert!(
        r.pos_ids[7..=9].iter().all(|&p| p == r.pos_ids[7]),
        "POS on every sub-word"
    );
}

/// Continuation sub-words unlabelled; Windows-1252 characters decoded; a deleted word is [UNK].
fn check_other_gmb_rows(rows: &[Row]) {
    let id = |t: &str| VOCAB.iter().position(|v| *v == t).unwrap() as u32;
    let r = &rows[3];
    assert_eq!(r.input_ids[3..5], [id("protest"), id("##s")]);
    assert_eq!(r.word_ids[3..5], [2, 2]);
    assert_eq!(r.labels[4], -100, "only the first sub-word is labelled");

    let r = &rows[1];
    assert_eq!(
        r.words,
        [
            "New",
            "York",
            "is",
            "café",
            "None",
            "\u{2019}s",
            "\u{2026}",
            "\u{AD}"
        ]
    );
    assert_eq!(r.tags[3], "B-art");
    assert_eq!(*r.input_ids.last().unwrap(), id("[SEP]"));
    assert_eq!(
        r.input_ids[r.input_ids.len() - 2],
        id("[UNK]"),
        "deleted word becomes [UNK]"
    );
    assert_eq!(
        r.labels.iter().filter(|&&l| l != -100).count(),
        r.words.len(),
        "every word keeps its label"
    );
    assert!(r.attention_mask.iter().all(|&m| m == 1));
}

/// Ranks partition the rows; the model projection skips the text columns.
fn check_ranks_partition_rows(ds: &Dataset) {
    let mut seen = Vec::new();
    for rank in 0..3 {
        for batch in ds
            .reader(Split::Train, Part { rank, world: 3 }, 1, Columns::Model)
            .unwrap()
        {
            for row in batch.unwrap() {
                assert!(row.words.is_empty() && !row.input_ids.is_empty());
                seen.push(row.sentence_index);
            }
        }
    }
    seen.sort();
    assert_eq!(seen, [0, 1, 2, 3]);
}

#[test]
fn conll_gives_the_same_rows_as_gmb_and_json_tokenizer_the_same_as_vocab() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = write_bert_folder(tmp.path());
    let tok_json = write_json_folder(tmp.path());
    let gmb = tmp.path().join("gmb.csv");
    std::fs::write(&gmb, gmb_bytes()).unwrap();
    let conll = tmp.path().join("c.conll");
    std::fs::write(&conll, conll_text()).unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    ok(&prep(&gmb, "gmb", &tok, &a, &[]));
    ok(&prep(&conll, "conll", &tok_json, &b, &[]));
    let (da, db) = (Dataset::open(&a).unwrap(), Dataset::open(&b).unwrap());
    assert_eq!(db.manifest.source.encoding, "utf-8");
    assert_ne!(
        da.manifest.tokenizer.fingerprint,
        db.manifest.tokenizer.fingerprint
    );
    assert_eq!(da.manifest.labels, db.manifest.labels);
    assert_eq!(da.manifest.pos, db.manifest.pos);
    assert_eq!(
        da.manifest.splits.train.sentences,
        db.manifest.splits.train.sentences
    );
    for (ra, rb) in all_rows(&da).iter().zip(all_rows(&db)) {
        assert_eq!(ra.input_ids, rb.input_ids);
        assert_eq!(ra.labels, rb.labels);
        assert_eq!(ra.pos_ids, rb.pos_ids);
        assert_eq!(ra.word_ids, rb.word_ids);
        assert_eq!(ra.tags, rb.tags);
    }
}

#[test]
fn same_flags_give_byte_identical_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (tok, input) = gmb_corpus(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let flags = [
        "--split",
        "0.5,0.25,0.25",
        "--seed",
        "7",
        "--shard-rows",
        "1",
    ];
    ok(&prep(&input, "gmb", &tok, &a, &flags));
    ok(&prep(&input, "gmb", &tok, &b, &flags));
    let (fa, fb) = (files(&a), files(&b));
    assert!(fa.len() > 3);
    assert_eq!(fa, fb);
    // A different seed gives a different split.
    let c = tmp.path().join("c");
    ok(&prep(
        &input,
        "gmb",
        &tok,
        &c,
        &[
            "--split",
            "0.5,0.25,0.25",
            "--seed",
            "8",
            "--shard-rows",
            "1",
        ],
    ));
    assert_ne!(files(&c), fa);
}

#[test]
fn long_sentences_become_windows_without_losing_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let (tok, input) = gmb_corpus(tmp.path());
    for overlap in ["0", "2"] {
        let out = tmp.path().join(format!("w{overlap}"));
        ok(&prep(
            &input,
            "gmb",
            &tok,
            &out,
            &[
                "--max-len",
                "6",
                "--window-overlap",
                overlap,
                "--split",
                "1,0,0",
            ],
        ));
        let ds = Dataset::open(&out).unwrap();
        let m = &ds.manifest;
        assert_eq!(m.splits.train.labelled, 30, "overlap {overlap}");
        assert!(m.splits.train.windowed_sentences == 4);
        let rows = all_rows(&ds);
        assert!(rows.iter().all(|r| r.input_ids.len() <= 6));
        // Re-assembling each sentence from its windows' labelled words gives every word once.
        for sentence in 0..4u32 {
            let mut words: Vec<i32> = Vec::new();
            for r in rows.iter().filter(|r| r.sentence_index == sentence) {
                for (p, &l) in r.labels.iter().enumerate() {
                    if l != -100 {
                        words.push(r.word_ids[p]);
                    }
                }
                assert!(
                    r.word_ids
                        .iter()
                        .all(|&w| w == -1 || (w as u32) >= r.word_start)
                );
            }
            let n = m.corpus.words;
            assert!(
                words.windows(2).all(|w| w[1] == w[0] + 1),
                "{words:?} of {n}"
            );
        }
    }
}

#[test]
fn drop_types_iob1_and_all_subwords() {
    let tmp = tempfile::tempdir().unwrap();
    let (tok, input) = gmb_corpus(tmp.path());
    let out = tmp.path().join("d");
    ok(&prep(
        &input,
        "gmb",
        &tok,
        &out,
        &["--drop-types", "art,eve", "--label-subwords", "all"],
    ));
    let m = Dataset::open(&out).unwrap().manifest;
    assert_eq!(m.labels, ["B-geo", "B-gpe", "I-geo", "I-gpe", "O"]);
    let bad = prep(
        &input,
        "gmb",
        &tok,
        &tmp.path().join("e"),
        &["--drop-types", "art,xyz"],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("\"xyz\""));

    let conll = tmp.path().join("iob1.conll");
    std::fs::write(
        &conll,
        "A x _ I-PER\nB x _ I-PER\nC x _ B-PER\nD x _ O\nE x _ I-LOC\n",
    )
    .unwrap();
    let out = tmp.path().join("iob1");
    ok(&prep(
        &conll,
        "conll",
        &tok,
        &out,
        &["--iob1", "--split", "1,0,0"],
    ));
    let ds = Dataset::open(&out).unwrap();
    assert_eq!(
        all_rows(&ds)[0].tags,
        ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    );
    assert_eq!(ds.manifest.corpus.scheme_violations, 0);
}

#[test]
fn inspect_text_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (tok, input) = gmb_corpus(tmp.path());
    let out = tmp.path().join("ds");
    ok(&prep(&input, "gmb", &tok, &out, &[]));
    let o = run(&["inspect", s(&out)]);
    ok(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    for want in [
        "4 sentences",
        "30 words",
        "checksums  ok",
        "B-geo",
        "NNP",
        "row length",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let o = run(&["inspect", s(&out), "--json"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let geo: u64 = ["train", "dev", "test"]
        .iter()
        .map(|sp| v["labels"][sp]["B-geo"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(geo, 4);
    assert_eq!(v["manifest"]["corpus"]["sentences"], 4);

    // A corrupted shard fails inspection.
    let shard = out.join("train/part-00000.parquet");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&shard, bytes).unwrap();
    let o = run(&["inspect", s(&out)]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("checksum"));
}

#[test]
fn existing_output_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let (tok, input) = gmb_corpus(tmp.path());
    let out = tmp.path().join("ds");
    ok(&prep(&input, "gmb", &tok, &out, &[]));
    let again = prep(&input, "gmb", &tok, &out, &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    ok(&prep(
        &input,
        "gmb",
        &tok,
        &out,
        &["--force", "--seed", "3"],
    ));
    assert_eq!(Dataset::open(&out).unwrap().manifest.options.seed, 3);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Each bad input: non-zero exit, a message naming the file, the line (where there is one) and what
/// was expected, and no output directory (nor temporary leftovers).
#[test]
fn bad_input_is_a_clear_error_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = write_bert_folder(tmp.path());
    for (what, bytes, wants, format) in bad_inputs() {
        let input = tmp.path().join(format!("{}.in", what.replace(' ', "_")));
        std::fs::write(&input, &bytes).unwrap();
        let out = tmp.path().join("out");
        let o = prep(&input, format, &tok, &out, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: succeeded");
        assert!(
            err.contains(input.to_str().unwrap()),
            "{what}: file not named: {err}"
        );
        for w in wants {
            assert!(err.contains(w), "{what}: {w:?} not in: {err}");
        }
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(!out.exists(), "{what}: output left behind");
    }
    bad_options_are_refused(tmp.path(), &tok);
}

/// (what, the input's bytes, what the error must say, format).
type BadInput = (&'static str, Vec<u8>, &'static [&'static str], &'static str);

fn bad_inputs() -> Vec<BadInput> {
    let crlf = |rows: &[&str]| rows.join("\r\n").into_bytes();
    vec![
        (
            "missing column",
            crlf(&["Sentence #,Word,POS,Tag", "Sentence: 1,a,DT,O", ",b,DT"]),
            &[":3:", "expected 4"],
            "gmb",
        ),
        (
            "extra column",
            crlf(&["Sentence #,Word,POS,Tag", "Sentence: 1,a,DT,O,x"]),
            &[":2:", "expected 4"],
            "gmb",
        ),
        (
            "no header",
            crlf(&["Sentence: 1,a,DT,O", ",b,DT,O"]),
            &[":1:", "no header"],
            "gmb",
        ),
        (
            "no sentence id",
            crlf(&["Sentence #,Word,POS,Tag", ",a,DT,O"]),
            &[":2:", "no sentence id"],
            "gmb",
        ),
        (
            "empty word",
            crlf(&["Sentence #,Word,POS,Tag", "Sentence: 1,a,DT,O", ",,DT,O"]),
            &[":3:", "empty word"],
            "gmb",
        ),
        (
            "bad tag",
            crlf(&[
                "Sentence #,Word,POS,Tag",
                "Sentence: 1,a,DT,O",
                ",b,NN,B_per",
            ]),
            &[":3:", "B-TYPE"],
            "gmb",
        ),
        (
            "undefined byte",
            b"Sentence #,Word,POS,Tag\nSentence: 1,a\x81,DT,O\n".to_vec(),
            &[":2:", "0x81", "no supported encoding"],
            "gmb",
        ),
        ("empty file", Vec::new(), &["empty"], "gmb"),
        (
            "conll bad tag",
            b"a DT _ O\nb DT _ X-per\n".to_vec(),
            &[":2:", "B-TYPE"],
            "conll",
        ),
        (
            "conll short row",
            b"a DT _ O\nb DT\n".to_vec(),
            &[":2:", "column"],
            "conll",
        ),
    ]
}

/// Option errors: a tokenizer folder without tokenizer files, split fractions not summing to 1.
fn bad_options_are_refused(dir: &std::path::Path, tok: &std::path::Path) {
    let input = dir.join("good.csv");
    std::fs::write(&input, gmb_bytes()).unwrap();
    let empty = dir.join("empty_tok");
    std::fs::create_dir_all(&empty).unwrap();
    let out = dir.join("out");
    let o = prep(&input, "gmb", &empty, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("empty_tok") && err.contains("tokenizer.json"),
        "{err}"
    );
    let o = prep(&input, "gmb", tok, &out, &["--split", "0.8,0.1,0.2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("sum to 1.1"), "{err}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
