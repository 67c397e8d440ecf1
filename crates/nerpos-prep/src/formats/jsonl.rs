//! JSON Lines corpora, as Hugging Face `datasets`' `to_json` writes them: one sentence per line, an
//! object with a list of tokens, a list of NER tags and (optionally) a list of POS tags. Tags are
//! strings, or integer class ids named by a names file (`datasets`' ClassLabel `names`, one per line in
//! id order). Every error names the file, the line and the key.

use std::path::Path;

use serde_json::{Map, Value};
use tracing::warn;

use crate::corpus::{Corpus, ReadOptions};
use crate::encoding::Detected;
use crate::error::{PrepError, Result};
use crate::formats::{Loaded, Reader, Settings, load_text};

pub struct Jsonl;

impl Reader for Jsonl {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    fn settings(&self) -> Settings {
        Settings::Keys
    }

    fn check(&self, opts: &ReadOptions) -> Result<()> {
        if opts.jsonl.pos_names.is_some() && opts.jsonl.pos.is_none() {
            return Err(PrepError::Options(
                "--pos-names names the ids under --pos-key, which is not given".into(),
            ));
        }
        Ok(())
    }

    fn load(&self, path: &Path, opts: &ReadOptions) -> Result<Loaded> {
        load_text(path, opts, |text, detected| {
            read(path, text, detected, &opts.jsonl)
        })
    }
}

/// The keys of a JSON Lines corpus, and the names of integer tag and POS ids.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JsonlKeys {
    pub tokens: String,
    pub tags: String,
    /// None: the corpus has no POS tags.
    pub pos: Option<String>,
    /// Names of integer tag ids, in id order (`datasets`' ClassLabel names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_names: Option<Vec<String>>,
}

impl Default for JsonlKeys {
    fn default() -> Self {
        JsonlKeys {
            tokens: "tokens".into(),
            tags: "ner_tags".into(),
            pos: None,
            tag_names: None,
            pos_names: None,
        }
    }
}

/// Reads the names file of integer ids: one name per line, in id order.
pub fn read_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| PrepError::io(path, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return Err(PrepError::File {
            path: path.to_owned(),
            msg: "no names (expected one name per line, in id order)".into(),
        });
    }
    Ok(names)
}

/// A list of strings under `key`, or of integers named by `names`.
fn strings(
    obj: &Map<String, Value>,
    key: &str,
    names: Option<&[String]>,
    err: &dyn Fn(String) -> PrepError,
) -> Result<Vec<String>> {
    let list = obj
        .get(key)
        .ok_or_else(|| err(format!("no key {key:?} (keys: {})", keys_of(obj))))?
        .as_array()
        .ok_or_else(|| err(format!("key {key:?} is not a list")))?;
    list.iter()
        .enumerate()
        .map(|(i, v)| match (v, names) {
            (Value::String(s), _) => Ok(s.clone()),
            (Value::Number(n), Some(names)) => n
                .as_u64()
                .and_then(|id| names.get(id as usize))
                .cloned()
                .ok_or_else(|| {
                    err(format!(
                        "key {key:?}, item {i}: id {n} is not among the {} names",
                        names.len()
                    ))
                }),
            (Value::Number(n), None) => Err(err(format!(
                "key {key:?}, item {i}: integer id {n} without a names file (pass --tag-names or \
                 --pos-names with one name per line, in id order)"
            ))),
            (other, _) => Err(err(format!(
                "key {key:?}, item {i}: {other} is neither a string nor an integer id"
            ))),
        })
        .collect()
}

fn keys_of(obj: &Map<String, Value>) -> String {
    obj.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// Reads the JSON Lines `text` of `path`.
pub fn read(path: &Path, text: &str, detected: Detected, keys: &JsonlKeys) -> Result<Corpus> {
    let mut corpus = Corpus::new(path, detected);
    corpus.has_pos = keys.pos.is_some();
    corpus.line_per_token = false;
    let mut empty = 0usize;
    for (i, raw) in text.split('\n').enumerate() {
        let line = i as u64 + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let err = |msg: String| PrepError::input(path, line, msg);
        let value: Value = serde_json::from_str(raw).map_err(|e| {
            err(format!(
                "not valid JSON ({e}); expected one JSON object per line"
            ))
        })?;
        let obj = value
            .as_object()
            .ok_or_else(|| err("not a JSON object (expected one object per line)".into()))?;
        let tokens = strings(obj, &keys.tokens, None, &err)?;
        let tags = strings(obj, &keys.tags, keys.tag_names.as_deref(), &err)?;
        let pos = match &keys.pos {
            Some(k) => Some(strings(obj, k, keys.pos_names.as_deref(), &err)?),
            None => None,
        };
        let mismatch = |key: &str, n: usize| {
            err(format!(
                "{n} item(s) under {key:?} for {} token(s) under {:?} (expected one per token)",
                tokens.len(),
                keys.tokens
            ))
        };
        if tags.len() != tokens.len() {
            return Err(mismatch(&keys.tags, tags.len()));
        }
        if let (Some(p), Some(k)) = (&pos, &keys.pos)
            && p.len() != tokens.len()
        {
            return Err(mismatch(k, p.len()));
        }
        if tokens.is_empty() {
            empty += 1;
            continue;
        }
        let id = match obj.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => line.to_string(),
        };
        corpus.start_sentence(id, line);
        for (k, (word, tag)) in tokens.iter().zip(&tags).enumerate() {
            corpus.push(line, word, pos.as_ref().map(|p| p[k].as_str()), tag)?;
        }
    }
    if empty > 0 {
        warn!(
            file = %path.display(),
            sentences = empty,
            "skipped sentences without tokens"
        );
    }
    corpus.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pos: bool, names: bool) -> JsonlKeys {
        JsonlKeys {
            pos: pos.then(|| "pos_tags".to_string()),
            tag_names: names.then(|| ["O", "B-PER", "I-PER"].map(String::from).to_vec()),
            ..JsonlKeys::default()
        }
    }

    #[test]
    fn string_and_integer_tags() {
        let p = Path::new("c.jsonl");
        let text = "{\"id\": \"0\", \"tokens\": [\"John\", \"Smith\", \"ran\"], \"ner_tags\": [1, 2, 0], \
                    \"pos_tags\": [\"NNP\", \"NNP\", \"VBD\"]}\n\n{\"tokens\": [\"x\"], \"ner_tags\": [0], \
                    \"pos_tags\": [\"NN\"]}\n";
        let c = read(p, text, Detected::Utf8, &keys(true, true)).unwrap();
        assert_eq!(c.sentences.len(), 2);
        assert_eq!(c.tags.name(c.tokens[1].tag), "I-PER");
        assert_eq!(c.pos.name(c.tokens[2].pos), "VBD");
        assert_eq!(c.sentences[1].id, "3");
        let c = read(p, text, Detected::Utf8, &keys(false, true)).unwrap();
        assert!(!c.has_pos);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let p = Path::new("c.jsonl");
        let cases = [
            (
                "{\"tokens\": [\"a\"], \"ner_tags\": [\"O\"]}\n{nope\n",
                ":2:",
                "not valid JSON",
            ),
            ("{\"tokens\": [\"a\"]}\n", ":1:", "no key \"ner_tags\""),
            (
                "{\"tokens\": [\"a\", \"b\"], \"ner_tags\": [\"O\"]}\n",
                ":1:",
                "1 item(s) under \"ner_tags\"",
            ),
            (
                "{\"tokens\": [\"a\"], \"ner_tags\": [7]}\n",
                ":1:",
                "id 7 is not among the 3 names",
            ),
            ("[1, 2]\n", ":1:", "not a JSON object"),
        ];
        for (text, line, what) in cases {
            let msg = read(p, text, Detected::Utf8, &keys(false, true))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(line) && msg.contains(what),
                "{text:?} -> {msg}"
            );
        }
        let msg = read(
            p,
            "{\"tokens\": [\"a\"], \"ner_tags\": [0]}\n",
            Detected::Utf8,
            &keys(false, false),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("without a names file"), "{msg}");
    }
}
