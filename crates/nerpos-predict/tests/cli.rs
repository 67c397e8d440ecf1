//! nerpos-predict end to end on a small random model (mechanics: windows, formats, logits; accuracy is
//! the trainer's tests' business).

mod common;

use std::path::{Path, PathBuf};

use common::model_folder;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nerpos-predict");

fn gmb(dir: &Path) -> PathBuf {
    let p = dir.join("in.csv");
    std::fs::write(
        &p,
        "Sentence #,Word,POS,Tag\nSentence: 1,Paris,NNP,B-geo\n,is,VBZ,O\n,in,IN,O\n,the,DT,O\n,New,NNP,B-geo\n,York,NNP,I-geo\n,of,IN,O\n,London,NNP,B-geo\n,.,.,O\nSentence: 2,London,NNP,B-geo\n,.,.,O\n",
    )
    .unwrap();
    p
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("NERPOS_LOG", "warn")
        .output()
        .unwrap()
}

/// `nerpos-predict --model M --input I --format F --out O` and `extra`.
fn predict(
    model: &Path,
    input: &Path,
    format: &str,
    out: &Path,
    extra: &[&str],
) -> std::process::Output {
    let (model, input, out) = (
        model.to_str().unwrap(),
        input.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let mut args = vec![
        "--model", model, "--input", input, "--format", format, "--out", out,
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn conll_jsonl_and_logits_for_a_gmb_file_with_windows() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_folder(tmp.path());
    let input = gmb(tmp.path());
    let out = tmp.path().join("pred.conll");
    let logits = tmp.path().join("logits.npy");
    let o = predict(
        &model,
        &input,
        "gmb",
        &out,
        &[
            "--logits",
            logits.to_str().unwrap(),
            "--window-overlap",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    let sentences: Vec<&str> = text.trim_end().split("\n\n").collect();
    assert_eq!(sentences.len(), 2);
    let first: Vec<Vec<&str>> = sentences[0]
        .lines()
        .map(|l| l.split(' ').collect())
        .collect();
    assert_eq!(
        first.len(),
        9,
        "every word of a sentence longer than max_len (8) gets a tag"
    );
    assert_eq!(first[4][..3], ["New", "NNP", "B-geo"]);
    let labels = ["B-geo", "B-per", "I-geo", "I-per", "O", "B-org", "I-org"];
    assert!(first.iter().all(|f| f.len() == 4 && labels.contains(&f[3])));
    // The gold report comes from nerpos-eval.
    assert!(String::from_utf8_lossy(&o.stderr).contains("micro avg"));
    check_logits(&logits, &first, &labels);
    check_jsonl_output(&model, &input, tmp.path());
}

/// logits: float32 [11 words, 7 labels], argmax = the written tag.
fn check_logits(logits: &Path, first: &[Vec<&str>], labels: &[&str]) {
    let bytes = std::fs::read(logits).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(
        header.contains("'shape': (11, 7)") && (10 + header_len).is_multiple_of(64),
        "{header}"
    );
    let data: Vec<f32> = bytes[10 + header_len..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(data.len(), 77);
    let argmax = |w: usize| {
        (0..7)
            .max_by(|&a, &b| data[w * 7 + a].total_cmp(&data[w * 7 + b]))
            .unwrap()
    };
    for (w, f) in first.iter().enumerate() {
        assert_eq!(labels[argmax(w)], f[3]);
    }
}

/// JSON Lines: words, tags and entities with offsets into the words joined by spaces.
fn check_jsonl_output(model: &Path, input: &Path, dir: &Path) {
    let out = dir.join("pred.jsonl");
    let o = predict(model, input, "gmb", &out, &["--output-format", "jsonl"]);
    assert!(o.status.success());
    let lines = jsonl(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["words"].as_array().unwrap().len(), 9);
    assert_eq!(lines[0]["tags"].as_array().unwrap().len(), 9);
    for e in lines[0]["entities"].as_array().unwrap() {
        let (a, b) = (
            e["word_start"].as_u64().unwrap(),
            e["word_end"].as_u64().unwrap(),
        );
        assert!(a < b && b <= 9 && e["score"].as_f64().unwrap() > 0.0);
        // Tokenised input: offsets into the words joined by spaces.
        let text: Vec<char> = lines[0]["text"].as_str().unwrap().chars().collect();
        let (s, t) = (
            e["start"].as_u64().unwrap() as usize,
            e["end"].as_u64().unwrap() as usize,
        );
        assert_eq!(
            text[s..t].iter().collect::<String>(),
            e["text"].as_str().unwrap()
        );
    }
    assert_eq!(lines[0]["text"], "Paris is in the New York of London .");
}

/// The tiny model with a POS tagger (random weights) beside its head.
fn with_pos_tagger(model: &Path) {
    use candle_core::{Device, Tensor};
    let file = model.join("model.safetensors");
    let mut w = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let dev = Device::Cpu;
    w.insert(
        "pos_tagger.weight".into(),
        Tensor::randn(0f32, 1.0, (10, 64), &dev).unwrap(),
    );
    w.insert(
        "pos_tagger.bias".into(),
        Tensor::zeros(10, candle_core::DType::F32, &dev).unwrap(),
    );
    candle_core::safetensors::save(&w, &file).unwrap();
    let meta_file = model.join("nerpos.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_file).unwrap()).unwrap();
    meta["pos_tagger"] = 0.5.into();
    std::fs::write(&meta_file, meta.to_string()).unwrap();
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Raw text as people write it: punctuation and clitics split off as the corpora split them, every
/// word's and entity's character offsets pointing into the input line (non-ASCII characters counted
/// as characters), and POS supplied by the model's POS tagger.
#[test]
fn raw_text_gives_entities_with_character_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_folder(tmp.path());
    with_pos_tagger(&model);
    let input = tmp.path().join("in.txt");
    let text = [
        "Peter Blackburn visited Paris.",
        "Zoë's \"New York\" trip--London's, (the) U.S.",
    ];
    // Windows line ends: the `\r` is not part of a line's text.
    std::fs::write(&input, text.join("\r\n") + "\r\n").unwrap();
    let out = tmp.path().join("out.jsonl");
    let o = predict(&model, &input, "text", &out, &["--output-format", "jsonl"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("every POS is <unk>"), "{err}");
    let lines = jsonl(&out);
    assert_eq!(lines.len(), 2);
    let words = |l: &serde_json::Value| -> Vec<String> {
        l["words"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        words(&lines[0]),
        ["Peter", "Blackburn", "visited", "Paris", "."]
    );
    assert_eq!(
        words(&lines[1]),
        [
            "Zoë", "'s", "\"", "New", "York", "\"", "trip", "--", "London", "'s", ",", "(", "the",
            ")", "U.S."
        ]
    );
    let model_tags = [
        "<pad>", "<unk>", "DT", "NNP", "VBZ", "IN", ".", "NN", "JJ", "CD",
    ];
    for (l, line) in lines.iter().zip(text) {
        assert_eq!(l["text"], line);
        let chars: Vec<char> = line.chars().collect();
        let slice = |a: u64, b: u64| chars[a as usize..b as usize].iter().collect::<String>();
        for (w, span) in words(l).iter().zip(l["spans"].as_array().unwrap()) {
            assert_eq!(
                &slice(span[0].as_u64().unwrap(), span[1].as_u64().unwrap()),
                w
            );
        }
        let pos = l["pos"].as_array().unwrap();
        assert_eq!(pos.len(), words(l).len());
        assert!(
            pos.iter()
                .all(|p| model_tags.contains(&p.as_str().unwrap()))
        );
        for e in l["entities"].as_array().unwrap() {
            let (a, b) = (e["start"].as_u64().unwrap(), e["end"].as_u64().unwrap());
            assert_eq!(slice(a, b), e["text"].as_str().unwrap(), "{e}");
        }
    }
    assert_eq!(
        lines[1]["spans"][1],
        serde_json::json!([3, 5]),
        "Zoë is 3 characters"
    );
    // The input's POS tags can be replaced by the tagger's on request, and a model without a tagger
    // says it has none.
    let plain = model_folder(&tmp.path().join("plain"));
    let o = predict(&plain, &input, "text", &out, &["--pos", "model"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no POS tagger"));
}

#[test]
fn plain_text_and_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_folder(tmp.path());
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "Paris is in France .\n\nthe New York\n").unwrap();
    let out = tmp.path().join("out.conll");
    let o = predict(&model, &input, "text", &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.trim_end().split("\n\n").count(), 2);
    assert!(text.lines().next().unwrap().starts_with("Paris _ "));

    // A pretrained checkpoint, not a fine-tuned folder.
    std::fs::remove_file(model.join("nerpos.json")).unwrap();
    let o = predict(&model, &input, "text", &out, &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a fine-tuned nerpos model folder"));
}

/// Plain text as users have it: a control character is removed as the tokenizer would remove it
/// (and counted), and every input line — empty ones included — gives one output sentence, numbered.
#[test]
fn text_lines_map_to_sentences_and_controls_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_folder(tmp.path());
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "Paris\u{1} is in France .\n\nthe New York\n").unwrap();
    let out = tmp.path().join("out.jsonl");
    let o = predict(&model, &input, "text", &out, &["--output-format", "jsonl"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("removed control characters"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let line_numbers: Vec<u64> = lines.iter().map(|l| l["line"].as_u64().unwrap()).collect();
    assert_eq!(line_numbers, vec![1, 2, 3]);
    assert_eq!(lines[0]["words"][0], "Paris");
    assert_eq!(lines[0]["tags"].as_array().unwrap().len(), 5);
    assert!(lines[1]["words"].as_array().unwrap().is_empty());
    assert_eq!(lines[2]["words"].as_array().unwrap().len(), 3);
}

/// JSON Lines input (as `datasets` writes it) with IOBES gold tags: `--scheme iobes` converts the gold
/// tags to IOB2 as nerpos-prep does; without POS tags for a model trained with them, a warning says so.
#[test]
fn json_lines_with_iobes_gold_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_folder(tmp.path());
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"tokens\": [\"Paris\", \"is\", \"New\", \"York\"], \"ner_tags\": [\"S-geo\", \"O\", \"B-geo\", \"E-geo\"], \"pos_tags\": [\"NNP\", \"VBZ\", \"NNP\", \"NNP\"]}\n\
         {\"tokens\": [\"London\"], \"ner_tags\": [\"S-geo\"], \"pos_tags\": [\"NNP\"]}\n",
    )
    .unwrap();
    let out = tmp.path().join("out.conll");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--format",
            "jsonl",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run_with = |extra: &[&str]| {
        let a = args(extra);
        run(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run_with(&["--scheme", "iobes", "--pos-key", "pos_tags"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("every POS is <unk>"), "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    let gold: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split(' ').nth(2).unwrap())
        .collect();
    assert_eq!(gold, ["B-geo", "O", "B-geo", "I-geo", "B-geo"]);
    assert!(text.starts_with("Paris NNP "), "{text}");

    let o = run_with(&["--scheme", "iobes"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("every POS is <unk>"),
        "{err}"
    );
    let o = run_with(&[]);
    assert!(o.status.success(), "gold kept as written without --scheme");
    assert!(std::fs::read_to_string(&out).unwrap().contains("S-geo"));
}

/// `--precision bf16` runs the model's products in bf16 (on this CPU: the encoder's products with
/// AVX512-BF16 where it has them, else candle's bf16 tensor ops): the same output shape,
/// probabilities close to f32's.
#[test]
fn bf16_precision_tags_like_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_folder(tmp.path());
    let input = gmb(tmp.path());
    let run_with = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec!["--output-format", "jsonl"];
        args.extend_from_slice(extra);
        let o = predict(&model, &input, "gmb", &out, &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        jsonl(&out)
    };
    let (f32s, bf16s) = (
        run_with("f32.jsonl", &[]),
        run_with("bf16.jsonl", &["--precision", "bf16"]),
    );
    assert_eq!(f32s.len(), bf16s.len());
    let mut worst = 0f64;
    for (a, b) in f32s.iter().zip(&bf16s) {
        for (p, q) in a["probs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["probs"].as_array().unwrap())
        {
            worst = worst.max((p.as_f64().unwrap() - q.as_f64().unwrap()).abs());
        }
    }
    eprintln!("largest |f32 - bf16| probability: {worst:.3}");
    assert!(worst > 0.0 && worst < 0.05, "{worst}");
}
