//! nerpos-predict streams raw text: its memory does not grow with the input's size, and the output
//! keeps the input's order. (Its own test binary: the peak memory read back is its children's.)

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::model_folder;

const BIN: &str = env!("CARGO_BIN_EXE_nerpos-predict");

/// `nerpos-predict --format text --output-format jsonl` of `input` into `out`.
fn tag_text(model: &Path, input: &Path, out: &Path) -> std::process::Output {
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    Command::new(BIN)
        .args([
            "--model",
            &path(model),
            "--input",
            &path(input),
            "--out",
            &path(out),
        ])
        .args(["--format", "text", "--output-format", "jsonl"])
        .env("NERPOS_LOG", "warn")
        .output()
        .unwrap()
}

/// The largest resident set of the children this process has waited for, in bytes (Linux).
fn children_max_rss() -> u64 {
    #[repr(C)]
    struct Rusage {
        times: [i64; 4],
        maxrss: i64,
        rest: [i64; 13],
    }
    unsafe extern "C" {
        fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    }
    let mut u = Rusage {
        times: [0; 4],
        maxrss: 0,
        rest: [0; 13],
    };
    // SAFETY: getrusage fills the struct it is given; RUSAGE_CHILDREN = -1.
    assert_eq!(unsafe { getrusage(-1, &mut u) }, 0);
    u.maxrss as u64 * 1024
}

/// An 80 MB text file (lines padded with spaces: many bytes, few words, so that the debug build tags it
/// quickly): tagged with a peak memory far below its size, every line in order.
#[test]
fn a_large_text_file_streams_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_folder(tmp.path());
    let input = tmp.path().join("big.txt");
    let lines = 2_000;
    let pad = " ".repeat(40_000);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for i in 0..lines {
        writeln!(f, "Paris is{pad}number {i} .").unwrap();
    }
    drop(f);
    let size = std::fs::metadata(&input).unwrap().len();
    let out = tmp.path().join("out.jsonl");
    let o = tag_text(&model, &input, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rss = children_max_rss();
    eprintln!(
        "input {:.1} MB, peak memory {:.1} MB",
        size as f64 / 1e6,
        rss as f64 / 1e6
    );
    assert!(
        rss < size / 2,
        "peak memory {rss} bytes for a {size}-byte input"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let mut n = 0;
    for (i, l) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["line"], i as u64 + 1);
        assert_eq!(v["words"][3], i.to_string());
        n += 1;
    }
    assert_eq!(n, lines);
}

/// Encodings are decided for the whole file before streaming (Windows-1252 here), and a byte that
/// fits none is an error naming its line.
#[test]
fn encodings_and_bad_bytes_while_streaming() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_folder(tmp.path());
    let run = |bytes: &[u8]| {
        let input = tmp.path().join("in.txt");
        std::fs::write(&input, bytes).unwrap();
        let out = tmp.path().join("out.jsonl");
        let o = tag_text(&model, &input, &out);
        (o, std::fs::read_to_string(&out).unwrap_or_default())
    };
    let (o, out) = run(b"Paris is\ncaf\xe9 Paris.\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let second: serde_json::Value = serde_json::from_str(out.lines().nth(1).unwrap()).unwrap();
    assert_eq!(second["words"][0], "café");
    assert_eq!(second["spans"][1], serde_json::json!([5, 10]));
    let (o, _) = run("Zoë\nParis\n"
        .as_bytes()
        .iter()
        .chain(b"\xff is\n")
        .copied()
        .collect::<Vec<u8>>()
        .as_slice());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains(":3") && err.contains("0xFF"),
        "{err}"
    );
}
