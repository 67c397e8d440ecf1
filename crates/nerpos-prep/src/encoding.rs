//! Decoding corpus bytes to text.
//!
//! Corpora such as the Kaggle GMB CSV are Windows-1252; others are UTF-8 (with or without BOM). Latin-1
//! files decode identically under Windows-1252 except for the C1 range 0x80–0x9F, where latin-1 gives
//! invisible control characters that BERT tokenizers delete (leaving words with no sub-word). So we
//! never decode as latin-1: 0x80–0x9F become Windows-1252's quotes, dashes and ellipsis, and the five
//! bytes Windows-1252 leaves undefined are errors.

use std::path::Path;

use crate::error::{PrepError, Result};

/// How to decode an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TextEncoding {
    /// UTF-8 if the whole file is valid UTF-8, else Windows-1252.
    #[default]
    Auto,
    #[value(name = "utf-8", alias = "utf8")]
    Utf8,
    #[value(name = "windows-1252", alias = "cp1252")]
    Windows1252,
}

/// The encoding actually used, as recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Utf8,
    Utf8Bom,
    Windows1252,
}

impl Detected {
    pub fn name(self) -> &'static str {
        match self {
            Detected::Utf8 => "utf-8",
            Detected::Utf8Bom => "utf-8 (bom)",
            Detected::Windows1252 => "windows-1252",
        }
    }
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
/// Bytes that Windows-1252 does not assign to any character.
const CP1252_UNDEFINED: [u8; 5] = [0x81, 0x8D, 0x8F, 0x90, 0x9D];

/// 1-based line number of byte offset `pos`.
pub(crate) fn line_of(bytes: &[u8], pos: usize) -> u64 {
    bytes[..pos.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64
        + 1
}

/// Decodes `bytes` (read from `path`) to text, rejecting bytes that are valid in no supported encoding
/// and control characters that have no place in a text corpus.
pub fn decode(path: &Path, bytes: &[u8], wanted: TextEncoding) -> Result<(String, Detected)> {
    let (text, detected) = decode_keeping_controls(path, bytes, wanted)?;
    reject_controls(path, &text)?;
    Ok((text, detected))
}

/// As [`decode`], but control characters stay in the text (for readers that remove them the way the
/// tokenizer does, such as plain-text prediction).
pub fn decode_keeping_controls(
    path: &Path,
    bytes: &[u8],
    wanted: TextEncoding,
) -> Result<(String, Detected)> {
    let (body, bom) = match bytes.strip_prefix(UTF8_BOM) {
        Some(rest) => (rest, true),
        None => (bytes, false),
    };
    let offset = bytes.len() - body.len();
    let (text, detected) = match (wanted, bom) {
        (TextEncoding::Utf8, _) | (TextEncoding::Auto, true) => {
            let text = utf8(path, bytes, offset, body)?;
            (
                text,
                if bom {
                    Detected::Utf8Bom
                } else {
                    Detected::Utf8
                },
            )
        }
        (TextEncoding::Windows1252, _) => (cp1252(path, body)?, Detected::Windows1252),
        (TextEncoding::Auto, false) => match std::str::from_utf8(body) {
            Ok(text) => (text.to_owned(), Detected::Utf8),
            Err(e) => {
                // A file whose earlier non-ASCII bytes were valid UTF-8 is UTF-8 with a bad byte, not
                // Windows-1252: decoding it as the latter would silently turn its letters into mojibake.
                let valid = &body[..e.valid_up_to()];
                if let Some(first) = valid.iter().position(|&b| b >= 0x80) {
                    return Err(PrepError::input(
                        path,
                        line_of(body, e.valid_up_to()),
                        format!(
                            "byte 0x{:02X} is not valid UTF-8, but the file's earlier non-ASCII text \
                             (line {}) is UTF-8; convert the file to a single encoding",
                            body[e.valid_up_to()],
                            line_of(body, first)
                        ),
                    ));
                }
                (cp1252(path, body)?, Detected::Windows1252)
            }
        },
    };
    Ok((text, detected))
}

/// The encoding [`decode`] would choose for the file at `path`, decided in one pass over it in blocks
/// (a file too large to hold in memory): a UTF-8 BOM, or `wanted`, or (`Auto`) UTF-8 when the whole
/// file is valid UTF-8, else Windows-1252 — unless earlier non-ASCII text was UTF-8 (an error).
pub fn detect_file(path: &Path, wanted: TextEncoding) -> Result<Detected> {
    use std::io::Read;
    let io = |e| PrepError::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut block: Vec<u8> = Vec::new();
    let (mut line, mut first_non_ascii, mut start) = (1u64, None, true);
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        block.extend_from_slice(&buf[..n]);
        if start && (block.len() >= 3 || n == 0) {
            start = false;
            // As `decode_keeping_controls` decides: Windows-1252 when asked, else a BOM means UTF-8.
            match (wanted, block.starts_with(UTF8_BOM)) {
                (TextEncoding::Windows1252, _) => return Ok(Detected::Windows1252),
                (_, true) => return Ok(Detected::Utf8Bom),
                (TextEncoding::Utf8, false) => return Ok(Detected::Utf8),
                (TextEncoding::Auto, false) => {}
            }
        }
        let (valid, bad) = match std::str::from_utf8(&block) {
            Ok(_) => (block.len(), false),
            // An incomplete sequence at the block's end: its rest is in the next block.
            Err(e) if e.error_len().is_none() && n > 0 => (e.valid_up_to(), false),
            Err(e) => (e.valid_up_to(), true),
        };
        for &b in &block[..valid] {
            if b >= 0x80 && first_non_ascii.is_none() {
                first_non_ascii = Some(line);
            }
            line += u64::from(b == b'\n');
        }
        if bad {
            return match first_non_ascii {
                Some(first) => Err(PrepError::input(
                    path,
                    line,
                    format!(
                        "byte 0x{:02X} is not valid UTF-8, but the file's earlier non-ASCII text \
                         (line {first}) is UTF-8; convert the file to a single encoding",
                        block[valid]
                    ),
                )),
                None => Ok(Detected::Windows1252),
            };
        }
        if n == 0 {
            return Ok(Detected::Utf8);
        }
        block.drain(..valid);
    }
}

/// Line `line` (1-based, without its newline) of `path`, whose encoding is `encoding`; control
/// characters stay (as in [`decode_keeping_controls`]).
pub fn decode_line(path: &Path, line: u64, bytes: &[u8], encoding: Detected) -> Result<String> {
    match encoding {
        Detected::Utf8 | Detected::Utf8Bom => match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.to_owned()),
            Err(e) => Err(PrepError::input(
                path,
                line,
                format!(
                    "byte 0x{:02X} is not valid UTF-8 (expected UTF-8 text; use --encoding \
                     windows-1252 for Windows-1252/latin-1 files)",
                    bytes[e.valid_up_to()]
                ),
            )),
        },
        Detected::Windows1252 => cp1252(path, bytes).map_err(|e| match e {
            PrepError::Input { path, msg, .. } => PrepError::Input { path, line, msg },
            other => other,
        }),
    }
}

fn utf8(path: &Path, whole: &[u8], offset: usize, body: &[u8]) -> Result<String> {
    match std::str::from_utf8(body) {
        Ok(text) => Ok(text.to_owned()),
        Err(e) => Err(PrepError::input(
            path,
            line_of(whole, offset + e.valid_up_to()),
            format!(
                "byte 0x{:02X} is not valid UTF-8 (expected UTF-8 text; use --encoding windows-1252 \
                 for Windows-1252/latin-1 files)",
                body[e.valid_up_to()]
            ),
        )),
    }
}

fn cp1252(path: &Path, body: &[u8]) -> Result<String> {
    if let Some(pos) = body.iter().position(|b| CP1252_UNDEFINED.contains(b)) {
        return Err(PrepError::input(
            path,
            line_of(body, pos),
            format!(
                "byte 0x{:02X} is valid in no supported encoding (neither UTF-8 nor Windows-1252); \
                 is this a text corpus?",
                body[pos]
            ),
        ));
    }
    let (text, had_errors) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(body);
    debug_assert!(
        !had_errors,
        "every byte but the undefined five maps in Windows-1252"
    );
    Ok(text.into_owned())
}

/// C0 controls other than tab/CR/LF and C1 controls (U+0080–U+009F) mean binary data or a file decoded
/// in the wrong encoding upstream; tokenizers would delete them and leave words with no sub-word.
fn reject_controls(path: &Path, text: &str) -> Result<()> {
    let bytes = text.as_bytes();
    let bad = bytes.iter().enumerate().find_map(|(i, &b)| {
        let c0 = b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r');
        let c1 = b == 0xC2 && bytes.get(i + 1).is_some_and(|n| (0x80..=0x9F).contains(n));
        (c0 || b == 0x7F || c1).then_some(i)
    });
    match bad {
        None => Ok(()),
        Some(i) => {
            let ch = text[i..].chars().next().unwrap_or('\0');
            Err(PrepError::input(
                path,
                line_of(bytes, i),
                format!(
                    "control character U+{:04X} in the text (expected printable text; a binary file, \
                     or text that was decoded as latin-1 and re-encoded?)",
                    ch as u32
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(bytes: &[u8], enc: TextEncoding) -> Result<(String, Detected)> {
        decode(Path::new("t.csv"), bytes, enc)
    }

    /// A file's encoding decided in blocks agrees with the whole-file decision, across block ends.
    #[test]
    fn detect_file_decides_as_decode_does() {
        let dir = tempfile::tempdir().unwrap();
        let detect = |bytes: &[u8], wanted| {
            let path = dir.path().join("t.txt");
            std::fs::write(&path, bytes).unwrap();
            detect_file(&path, wanted)
        };
        // An `é` (2 bytes) straddling the first 1 MiB block's end.
        let mut long = vec![b'a'; (1 << 20) - 1];
        long.extend("é\n".as_bytes());
        assert_eq!(detect(&long, TextEncoding::Auto).unwrap(), Detected::Utf8);
        assert_eq!(
            detect(b"caf\xe9\n", TextEncoding::Auto).unwrap(),
            Detected::Windows1252
        );
        assert_eq!(
            detect(b"\xEF\xBB\xBFa\n", TextEncoding::Auto).unwrap(),
            Detected::Utf8Bom
        );
        let bom = b"\xEF\xBB\xBFa\n";
        assert_eq!(
            detect(bom, TextEncoding::Windows1252).unwrap(),
            Detected::Windows1252
        );
        assert_eq!(detect(b"", TextEncoding::Auto).unwrap(), Detected::Utf8);
        let mixed = "Zo\u{eb}\nParis\n"
            .bytes()
            .chain(*b"\xff\n")
            .collect::<Vec<u8>>();
        let err = detect(&mixed, TextEncoding::Auto).unwrap_err().to_string();
        assert!(err.contains(":3") && err.contains("line 1"), "{err}");
        assert_eq!(
            decode_line(Path::new("t"), 7, b"caf\xe9", Detected::Windows1252).unwrap(),
            "café"
        );
        let err = decode_line(Path::new("t"), 7, b"\xff", Detected::Utf8).unwrap_err();
        assert!(err.to_string().contains(":7"), "{err}");
    }

    #[test]
    fn utf8_with_and_without_bom() {
        let (t, d) = dec("a,é\n".as_bytes(), TextEncoding::Auto).unwrap();
        assert_eq!((t.as_str(), d), ("a,é\n", Detected::Utf8));
        let (t, d) = dec(b"\xEF\xBB\xBFa\n", TextEncoding::Auto).unwrap();
        assert_eq!((t.as_str(), d), ("a\n", Detected::Utf8Bom));
    }

    #[test]
    fn windows_1252_punctuation_is_not_latin1_controls() {
        // 0x85 ellipsis, 0x92 right quote, 0x96 en dash, 0xE9 e-acute.
        let (t, d) = dec(b"x\x85\x92\x96\xE9\n", TextEncoding::Auto).unwrap();
        assert_eq!(d, Detected::Windows1252);
        assert_eq!(t, "x\u{2026}\u{2019}\u{2013}\u{e9}\n");
    }

    #[test]
    fn undefined_cp1252_byte_is_an_error_with_line() {
        let err = dec(b"ok\nok\nbad\x81\n", TextEncoding::Auto).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("t.csv:3:"), "{msg}");
        assert!(msg.contains("0x81"), "{msg}");
    }

    #[test]
    fn mixed_utf8_then_invalid_is_an_error() {
        let err = dec(
            "é\n"
                .as_bytes()
                .iter()
                .chain(b"x\xE9\n")
                .copied()
                .collect::<Vec<_>>()
                .as_slice(),
            TextEncoding::Auto,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("t.csv:2:") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn forced_utf8_rejects_cp1252() {
        let err = dec(b"a\nb\x92\n", TextEncoding::Utf8)
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.csv:2:") && err.contains("0x92"), "{err}");
    }

    #[test]
    fn control_characters_are_rejected() {
        let err = dec(b"a\nb\x00c\n", TextEncoding::Auto)
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.csv:2:") && err.contains("U+0000"), "{err}");
        let err = dec("a\u{85}\n".as_bytes(), TextEncoding::Auto)
            .unwrap_err()
            .to_string();
        assert!(err.contains("U+0085"), "{err}");
    }
}
