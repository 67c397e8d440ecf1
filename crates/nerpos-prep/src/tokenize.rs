//! Loading a Hugging Face tokenizer folder and turning the corpus' words into sub-word ids.
//!
//! BERT-family tokenizers normalise, pre-tokenise and word-piece each pre-split word on its own (what
//! `is_split_into_words=True` does in Python), so a word's sub-words do not depend on its neighbours. We
//! therefore tokenize each distinct word once and assemble sentences from the pieces — ~30× fewer
//! tokenizer calls on GMB — and prove the shortcut on every run by encoding a sample of whole sentences
//! through the tokenizer and comparing (see [`SubwordTokenizer::check_sentences`]).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tokenizers::models::ModelWrapper;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{PrepError, Result};

/// The files that make a tokenizer folder, in the order they are looked for.
pub const TOKENIZER_JSON: &str = "tokenizer.json";
pub const VOCAB_TXT: &str = "vocab.txt";
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// A loaded tokenizer with what alignment needs to know about it.
pub struct SubwordTokenizer {
    tokenizer: Tokenizer,
    pub dir: PathBuf,
    /// The files it was built from (names inside `dir`), hashed into `fingerprint`.
    pub files: Vec<String>,
    /// `sha256:` of the tokenizer files; equal fingerprints mean identical tokenization.
    pub fingerprint: String,
    /// Special tokens before and after a sequence ([CLS] and [SEP] for BERT).
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
    pub unk_id: u32,
    pub pad_id: u32,
}

/// Sub-word ids of distinct words, flattened: word `i`'s pieces are `ids[offsets[i]..offsets[i+1]]`.
#[derive(Debug, Default)]
pub struct WordPieces {
    pub offsets: Vec<usize>,
    pub ids: Vec<u32>,
    /// Words for which the tokenizer produced nothing; they are given [UNK].
    pub empty: Vec<u32>,
}

impl WordPieces {
    pub fn of(&self, word: u32) -> &[u32] {
        &self.ids[self.offsets[word as usize]..self.offsets[word as usize + 1]]
    }
}

fn tok_err(dir: &Path, msg: impl std::fmt::Display) -> PrepError {
    PrepError::Tokenizer {
        path: dir.to_owned(),
        msg: msg.to_string(),
    }
}

/// Hashes the tokenizer files of `dir` the way [`SubwordTokenizer::load`] does, without loading it.
/// The trainer uses this to compare a dataset with a checkpoint folder.
pub fn fingerprint(dir: &Path) -> Result<(Vec<String>, String)> {
    let files: Vec<&str> = if dir.join(TOKENIZER_JSON).is_file() {
        vec![TOKENIZER_JSON]
    } else if dir.join(VOCAB_TXT).is_file() {
        if dir.join(TOKENIZER_CONFIG).is_file() {
            vec![VOCAB_TXT, TOKENIZER_CONFIG]
        } else {
            vec![VOCAB_TXT]
        }
    } else {
        return Err(tok_err(
            dir,
            format!(
                "no tokenizer files (expected {TOKENIZER_JSON}, or {VOCAB_TXT} with an optional \
                 {TOKENIZER_CONFIG}, as in a Hugging Face checkpoint folder)"
            ),
        ));
    };
    let mut hasher = Sha256::new();
    for f in &files {
        let bytes = std::fs::read(dir.join(f)).map_err(|e| PrepError::io(dir.join(f), e))?;
        hasher.update(f.as_bytes());
        hasher.update([0]);
        hasher.update(Sha256::digest(&bytes));
    }
    Ok((
        files.iter().map(|s| s.to_string()).collect(),
        format!("sha256:{:x}", hasher.finalize()),
    ))
}

/// `tokenizer_config.json` keys used when only `vocab.txt` is present (Hugging Face's BertTokenizer
/// defaults when absent).
#[derive(serde::Deserialize)]
struct BertTokenizerConfig {
    #[serde(default = "yes")]
    do_lower_case: bool,
    #[serde(default = "yes")]
    tokenize_chinese_chars: bool,
    #[serde(default)]
    strip_accents: Option<bool>,
    #[serde(default = "unk")]
    unk_token: String,
    #[serde(default = "sep")]
    sep_token: String,
    #[serde(default = "pad")]
    pad_token: String,
    #[serde(default = "cls")]
    cls_token: String,
    #[serde(default = "mask")]
    mask_token: String,
}

fn yes() -> bool {
    true
}
fn unk() -> String {
    "[UNK]".into()
}
fn sep() -> String {
    "[SEP]".into()
}
fn pad() -> String {
    "[PAD]".into()
}
fn cls() -> String {
    "[CLS]".into()
}
fn mask() -> String {
    "[MASK]".into()
}

fn bert_from_vocab(dir: &Path) -> Result<Tokenizer> {
    let config_path = dir.join(TOKENIZER_CONFIG);
    let config: BertTokenizerConfig = if config_path.is_file() {
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| PrepError::io(&config_path, e))?;
        serde_json::from_str(&text).map_err(|e| tok_err(dir, format!("{TOKENIZER_CONFIG}: {e}")))?
    } else {
        serde_json::from_str("{}").expect("all keys have defaults")
    };
    let vocab = dir.join(VOCAB_TXT);
    let model = WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token(config.unk_token.clone())
        .build()
        .map_err(|e| tok_err(dir, format!("{VOCAB_TXT}: {e}")))?;
    let id = |token: &str| {
        model
            .token_to_id_checked(token)
            .ok_or_else(|| tok_err(dir, format!("{VOCAB_TXT} has no {token} token")))
    };
    let processor = BertProcessing::new(
        (config.sep_token.clone(), id(&config.sep_token)?),
        (config.cls_token.clone(), id(&config.cls_token)?),
    );
    let pad_id = id(&config.pad_token)?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(
            true,
            config.tokenize_chinese_chars,
            config.strip_accents,
            config.do_lower_case,
        )))
        .map_err(|e| tok_err(dir, e))?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(processor));
    let specials = [
        &config.pad_token,
        &config.unk_token,
        &config.cls_token,
        &config.sep_token,
        &config.mask_token,
    ];
    tokenizer
        .add_special_tokens(specials.iter().map(|s| AddedToken::from(s.as_str(), true)))
        .map_err(|e| tok_err(dir, e))?;
    tokenizer.with_padding(Some(tokenizers::PaddingParams {
        pad_id,
        pad_token: config.pad_token.clone(),
        ..Default::default()
    }));
    Ok(tokenizer)
}

/// `token_to_id` on the model only (the trait method), named to read clearly above.
trait TokenToId {
    fn token_to_id_checked(&self, token: &str) -> Option<u32>;
}
impl TokenToId for WordPiece {
    fn token_to_id_checked(&self, token: &str) -> Option<u32> {
        tokenizers::Model::token_to_id(self, token)
    }
}

impl SubwordTokenizer {
    /// Loads the tokenizer of a Hugging Face checkpoint folder: `tokenizer.json`, else `vocab.txt`
    /// with `tokenizer_config.json` (lower-casing, accents, special tokens).
    pub fn load(dir: &Path) -> Result<SubwordTokenizer> {
        if !dir.is_dir() {
            return Err(tok_err(
                dir,
                "not a directory (expected a checkpoint folder)",
            ));
        }
        let (files, fingerprint) = fingerprint(dir)?;
        let mut tokenizer = if files[0] == TOKENIZER_JSON {
            Tokenizer::from_file(dir.join(TOKENIZER_JSON))
                .map_err(|e| tok_err(dir, format!("{TOKENIZER_JSON}: {e}")))?
        } else {
            bert_from_vocab(dir)?
        };
        // Checkpoints often ship fixed-length padding and truncation (MiniLM: both 128); windows are
        // ours to make and rows are padded per batch, so both are switched off.
        let pad_from_config = tokenizer.get_padding().map(|p| p.pad_id);
        tokenizer
            .with_truncation(None)
            .map_err(|e| tok_err(dir, e))?;
        tokenizer.with_padding(None);

        let unk_id = unk_id(&tokenizer).ok_or_else(|| {
            tok_err(
                dir,
                "no unknown token (expected the model to define one, e.g. [UNK])",
            )
        })?;
        let pad_id = pad_from_config
            .or_else(|| {
                ["[PAD]", "<pad>"]
                    .iter()
                    .find_map(|t| tokenizer.token_to_id(t))
            })
            .ok_or_else(|| tok_err(dir, "no padding token (expected [PAD] or <pad>)"))?;

        // Find the special tokens the post-processor puts around a sequence from a one-word input.
        let enc = tokenizer
            .encode(&["a"][..], true)
            .map_err(|e| tok_err(dir, e))?;
        let mask = enc.get_special_tokens_mask();
        let first = mask.iter().position(|&m| m == 0).unwrap_or(mask.len());
        let last = mask.iter().rposition(|&m| m == 0).map_or(first, |p| p + 1);
        let prefix = enc.get_ids()[..first].to_vec();
        let suffix = enc.get_ids()[last..].to_vec();

        Ok(SubwordTokenizer {
            tokenizer,
            dir: dir.to_owned(),
            files,
            fingerprint,
            prefix,
            suffix,
            unk_id,
            pad_id,
        })
    }

    /// The underlying Hugging Face tokenizer (truncation and padding switched off).
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Number of special tokens around each sequence.
    pub fn num_special(&self) -> usize {
        self.prefix.len() + self.suffix.len()
    }

    /// Sub-word ids of each word (in parallel; each word once).
    pub fn word_pieces(&self, words: &[String]) -> Result<WordPieces> {
        let inputs: Vec<[&str; 1]> = words.iter().map(|w| [w.as_str()]).collect();
        let encodings = self
            .tokenizer
            .encode_batch_fast(inputs.iter().map(|w| &w[..]).collect(), false)
            .map_err(|e| tok_err(&self.dir, e))?;
        let mut pieces = WordPieces {
            offsets: Vec::with_capacity(words.len() + 1),
            ids: Vec::with_capacity(words.len() * 2),
            empty: Vec::new(),
        };
        pieces.offsets.push(0);
        for (i, enc) in encodings.iter().enumerate() {
            if enc.get_ids().is_empty() {
                pieces.empty.push(i as u32);
                pieces.ids.push(self.unk_id);
            } else {
                pieces.ids.extend_from_slice(enc.get_ids());
            }
            pieces.offsets.push(pieces.ids.len());
        }
        Ok(pieces)
    }

    /// Encodes whole sentences through the tokenizer (as `is_split_into_words` does) and compares with
    /// `assemble`'s per-word result; a disagreement is an error (a tokenizer whose pieces depend on
    /// neighbouring words). Words the tokenizer drops count as [UNK] on both sides.
    pub fn check_sentences(
        &self,
        sentences: &[Vec<&str>],
        assemble: impl Fn(&[&str]) -> Vec<u32> + Sync,
    ) -> Result<()> {
        sentences.par_iter().try_for_each(|words| {
            let enc = self
                .tokenizer
                .encode(&words[..], true)
                .map_err(|e| tok_err(&self.dir, e))?;
            let mut before = Vec::new();
            let mut after = Vec::new();
            let mut per_word: Vec<Vec<u32>> = vec![Vec::new(); words.len()];
            for (&id, word) in enc.get_ids().iter().zip(enc.get_word_ids()) {
                match word {
                    Some(w) => per_word[*w as usize].push(id),
                    None if per_word.iter().all(Vec::is_empty) => before.push(id),
                    None => after.push(id),
                }
            }
            let mut theirs = before;
            for pieces in per_word {
                if pieces.is_empty() {
                    theirs.push(self.unk_id);
                } else {
                    theirs.extend(pieces);
                }
            }
            theirs.extend(after);
            if theirs != assemble(words) {
                return Err(tok_err(
                    &self.dir,
                    format!(
                        "tokenizes words differently inside a sentence than alone (sentence {:?}); \
                         only word-independent tokenizers (BERT WordPiece and the like) are supported",
                        words.join(" ")
                    ),
                ));
            }
            Ok(())
        })
    }
}

fn unk_id(tokenizer: &Tokenizer) -> Option<u32> {
    let name = match tokenizer.get_model() {
        ModelWrapper::WordPiece(m) => Some(m.unk_token.clone()),
        ModelWrapper::BPE(m) => m.unk_token.clone(),
        ModelWrapper::WordLevel(m) => Some(m.unk_token.clone()),
        _ => None,
    };
    name.into_iter()
        .chain(["[UNK]".to_string(), "<unk>".to_string()])
        .find_map(|t| tokenizer.token_to_id(&t))
}
