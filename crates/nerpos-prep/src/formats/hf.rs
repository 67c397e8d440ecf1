//! Hugging Face `datasets` corpora as `datasets` stores them: a Parquet export (`to_parquet`), an
//! Arrow file, or a `save_to_disk` folder — one split's folder (`state.json` naming its Arrow shards)
//! or a `DatasetDict`'s (`dataset_dict.json` naming its splits). A record is a sentence: a list of
//! tokens, a list of NER tags and optionally of POS tags, each tag a string or an integer ClassLabel
//! id. The ids' names come from a names file (`--tag-names`, `--pos-names`), else from the schema's
//! `huggingface` metadata `datasets` writes into every Parquet and Arrow file, else from the
//! `dataset_info.json` beside the shards. Errors name the file and the record (0-based, as
//! `dataset[i]` counts).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::corpus::{Corpus, JsonlKeys, ReadOptions};
use crate::encoding::Detected;
use crate::error::{PrepError, Result};
use crate::formats::{Loaded, Reader, Settings};
use crate::prepare::Input;

pub struct Hf;

impl Reader for Hf {
    fn name(&self) -> &'static str {
        "hf"
    }

    fn settings(&self) -> Settings {
        Settings::Keys
    }

    fn resolve(&self, input: Input) -> Result<Input> {
        resolve_input(input)
    }

    fn load(&self, path: &Path, opts: &ReadOptions) -> Result<Loaded> {
        load(path, &opts.jsonl)
    }
}

/// The POS key read when `--pos-key` is not given and the records have it (`datasets`' own name).
pub const POS_KEY: &str = "pos_tags";

/// A `DatasetDict` folder becomes a pre-split input (`train`, `validation` or `dev`, `test`); any
/// other input is left as it is.
pub fn resolve_input(input: Input) -> Result<Input> {
    let Input::One(dir) = &input else {
        return Ok(input);
    };
    let dict = dir.join("dataset_dict.json");
    if !dict.is_file() {
        return Ok(input);
    }
    let text = std::fs::read_to_string(&dict).map_err(|e| PrepError::io(&dict, e))?;
    let bad = |msg: String| PrepError::File {
        path: dict.clone(),
        msg,
    };
    let value: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    let splits: Vec<&str> = value["splits"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .ok_or_else(|| {
            bad("no list under \"splits\" (expected the DatasetDict's splits)".into())
        })?;
    let pick = |names: &[&str]| {
        names
            .iter()
            .find(|n| splits.contains(n))
            .map(|n| dir.join(n))
    };
    let train = pick(&["train"]).ok_or_else(|| {
        bad(format!(
            "no \"train\" split among {splits:?} (expected train, and optionally validation or dev, and test)"
        ))
    })?;
    let known = ["train", "validation", "dev", "test"];
    if let Some(other) = splits.iter().find(|s| !known.contains(s)) {
        return Err(bad(format!(
            "split {other:?} is not one of {known:?}; give the splits' folders with --train, --dev, --test"
        )));
    }
    Ok(Input::Split {
        train,
        dev: pick(&["validation", "dev"]),
        test: pick(&["test"]),
    })
}

/// Reads a Parquet or Arrow file, or a split's `save_to_disk` folder (its shards in order).
pub fn load(path: &Path, keys: &JsonlKeys) -> Result<Loaded> {
    let files = data_files(path)?;
    let folder_info = info_features(path)?;
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let mut reader = Records {
        keys,
        folder_info: folder_info.as_ref(),
        next_record: 0,
        pos_key: None,
    };
    // One corpus per shard, appended: every error and location names the shard it is in.
    let mut all: Option<Corpus> = None;
    for file in &files {
        let data = std::fs::read(file).map_err(|e| PrepError::io(file, e))?;
        hash.update(&data);
        bytes += data.len() as u64;
        let mut part = Corpus::new(file, Detected::Utf8);
        part.line_per_token = false;
        part.records = true;
        reader.read_file(file, data, &mut part)?;
        part.has_pos = reader.pos_key.is_some();
        match &mut all {
            None => all = Some(part),
            Some(c) => c.append(part),
        }
    }
    let corpus = all.expect("data_files lists at least one file");
    if corpus.sentences.is_empty() {
        return Err(PrepError::File {
            path: path.to_owned(),
            msg: "no sentences (expected records with tokens)".into(),
        });
    }
    Ok(Loaded {
        corpus,
        bytes,
        sha256: format!("{:x}", hash.finalize()),
    })
}

/// The data files of `path`: itself, or the Arrow shards its `state.json` lists.
fn data_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let state = path.join("state.json");
    if !state.is_file() {
        let msg = if path.join("dataset_dict.json").is_file() {
            "a DatasetDict folder (dataset_dict.json) is read with --input, not as one split's file"
        } else {
            "a folder without state.json (expected a Parquet or Arrow file, or a folder written by \
             datasets' save_to_disk)"
        };
        return Err(PrepError::File {
            path: path.to_owned(),
            msg: msg.into(),
        });
    }
    let text = std::fs::read_to_string(&state).map_err(|e| PrepError::io(&state, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| PrepError::File {
        path: state.clone(),
        msg: format!("not valid JSON ({e})"),
    })?;
    let files: Vec<PathBuf> = value["_data_files"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["filename"].as_str())
                .map(|f| path.join(f))
                .collect()
        })
        .unwrap_or_default();
    if files.is_empty() {
        return Err(PrepError::File {
            path: state,
            msg: "no files under \"_data_files\" (expected the split's Arrow shards)".into(),
        });
    }
    Ok(files)
}

/// The `features` of the `dataset_info.json` in a `save_to_disk` folder, if there is one.
fn info_features(path: &Path) -> Result<Option<Value>> {
    let info = path.join("dataset_info.json");
    if !path.is_dir() || !info.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&info).map_err(|e| PrepError::io(&info, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| PrepError::File {
        path: info.clone(),
        msg: format!("not valid JSON ({e})"),
    })?;
    Ok(value.get("features").cloned())
}

/// The `features` of the `huggingface` schema metadata `datasets` writes.
fn schema_features(schema: &SchemaRef) -> Option<Value> {
    let meta = schema.metadata().get("huggingface")?;
    let value: Value = serde_json::from_str(meta).ok()?;
    value["info"].get("features").cloned()
}

/// ClassLabel names of a feature: `{"names": [...]}` inside `List`/`Sequence` wrappers (or the
/// one-element list older versions wrote).
fn class_names(feature: &Value) -> Option<Vec<String>> {
    if let Some(names) = feature.get("names").and_then(Value::as_array) {
        return names
            .iter()
            .map(|n| n.as_str().map(str::to_owned))
            .collect();
    }
    match feature {
        Value::Object(o) => o.get("feature").and_then(class_names),
        Value::Array(a) if a.len() == 1 => class_names(&a[0]),
        _ => None,
    }
}

/// Reads records into a corpus, file after file, numbering them across the files of a split.
struct Records<'a> {
    keys: &'a JsonlKeys,
    folder_info: Option<&'a Value>,
    next_record: u64,
    /// The POS key read (fixed by the first file).
    pos_key: Option<String>,
}

/// One column's tags: their strings, or ids and the names that name them.
struct Tags<'c> {
    key: &'c str,
    column: &'c ArrayRef,
    names: Option<Vec<String>>,
}

impl Records<'_> {
    fn read_file(&mut self, file: &Path, data: Vec<u8>, corpus: &mut Corpus) -> Result<()> {
        let (schema, batches) = batches(file, data)?;
        let features = schema_features(&schema);
        let names = |key: &str, given: &Option<Vec<String>>| {
            given.clone().or_else(|| {
                [features.as_ref(), self.folder_info]
                    .into_iter()
                    .flatten()
                    .find_map(|f| f.get(key).and_then(class_names))
            })
        };
        let has = |key: &str| schema.field_with_name(key).is_ok();
        let pos_key = match &self.keys.pos {
            Some(k) => Some(k.clone()),
            None => has(POS_KEY).then(|| POS_KEY.to_string()),
        };
        if self.next_record > 0 && pos_key != self.pos_key {
            return Err(PrepError::File {
                path: file.to_owned(),
                msg: format!(
                    "POS key {pos_key:?}, where the split's first file has {:?}",
                    self.pos_key
                ),
            });
        }
        self.pos_key = pos_key.clone();
        let fields: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        for key in [
            Some(&self.keys.tokens),
            Some(&self.keys.tags),
            pos_key.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if !has(key) {
                return Err(PrepError::File {
                    path: file.to_owned(),
                    msg: format!("no column {key:?} (columns: {})", fields.join(", ")),
                });
            }
        }
        let tag_names = names(&self.keys.tags, &self.keys.tag_names);
        let pos_names = pos_key
            .as_deref()
            .and_then(|k| names(k, &self.keys.pos_names));
        for batch in batches {
            let batch = batch.map_err(|source| PrepError::Arrow {
                path: file.to_owned(),
                source,
            })?;
            let col = |key: &str| batch.column_by_name(key).expect("checked in the schema");
            let tokens = col(&self.keys.tokens);
            let tags = Tags {
                key: &self.keys.tags,
                column: col(&self.keys.tags),
                names: tag_names.clone(),
            };
            let pos = pos_key.as_deref().map(|k| Tags {
                key: k,
                column: col(k),
                names: pos_names.clone(),
            });
            for row in 0..batch.num_rows() {
                self.record(file, corpus, tokens, &tags, pos.as_ref(), &batch, row)?;
            }
        }
        Ok(())
    }

    /// One record: checked, then its tokens pushed as a sentence (an empty one is left out).
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        file: &Path,
        corpus: &mut Corpus,
        tokens: &ArrayRef,
        tags: &Tags,
        pos: Option<&Tags>,
        batch: &RecordBatch,
        row: usize,
    ) -> Result<()> {
        let record = self.next_record;
        self.next_record += 1;
        let err = |msg: String| PrepError::Record {
            path: file.to_owned(),
            record,
            msg,
        };
        let words = strings(tokens, row, &self.keys.tokens, None).map_err(&err)?;
        let tag_list = strings(tags.column, row, tags.key, tags.names.as_deref()).map_err(&err)?;
        let pos_list = pos
            .map(|p| strings(p.column, row, p.key, p.names.as_deref()))
            .transpose()
            .map_err(&err)?;
        let lengths = std::iter::once((tags.key, tag_list.len()))
            .chain(pos.zip(pos_list.as_ref()).map(|(p, l)| (p.key, l.len())));
        for (key, n) in lengths {
            if n != words.len() {
                return Err(err(format!(
                    "{n} item(s) under {key:?} for {} token(s) under {:?} (expected one per token)",
                    words.len(),
                    self.keys.tokens
                )));
            }
        }
        if words.is_empty() {
            return Ok(());
        }
        corpus.start_sentence(
            sentence_id(batch, row).unwrap_or(record.to_string()),
            record,
        );
        for (k, word) in words.iter().enumerate() {
            let p = pos_list.as_ref().map(|p| p[k].as_str());
            corpus.push(record, word, p, &tag_list[k])?;
        }
        Ok(())
    }
}

/// The record's `id` column, when it has one.
fn sentence_id(batch: &RecordBatch, row: usize) -> Option<String> {
    let col = batch.column_by_name("id")?;
    if col.is_null(row) {
        return None;
    }
    match col.data_type() {
        DataType::Utf8 => Some(col.as_string::<i32>().value(row).to_owned()),
        DataType::LargeUtf8 => Some(col.as_string::<i64>().value(row).to_owned()),
        DataType::Int64 => Some(col.as_primitive::<Int64Type>().value(row).to_string()),
        DataType::Int32 => Some(col.as_primitive::<Int32Type>().value(row).to_string()),
        _ => None,
    }
}

/// A file's record batches, Parquet or Arrow alike.
type Batches = Box<dyn Iterator<Item = std::result::Result<RecordBatch, arrow_schema::ArrowError>>>;

/// The schema and record batches of a Parquet file (`PAR1`), an Arrow IPC file (`ARROW1`) or an
/// Arrow IPC stream (what `save_to_disk` writes).
fn batches(file: &Path, data: Vec<u8>) -> Result<(SchemaRef, Batches)> {
    let arrow = |source| PrepError::Arrow {
        path: file.to_owned(),
        source,
    };
    if data.starts_with(b"PAR1") {
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(data),
        )
        .map_err(|source| PrepError::Parquet {
            path: file.to_owned(),
            source,
        })?;
        let schema = builder.schema().clone();
        let reader = builder.build().map_err(|source| PrepError::Parquet {
            path: file.to_owned(),
            source,
        })?;
        return Ok((schema, Box::new(reader)));
    }
    if data.starts_with(b"ARROW1") {
        let reader =
            arrow_ipc::reader::FileReader::try_new(Cursor::new(data), None).map_err(arrow)?;
        return Ok((reader.schema(), Box::new(reader)));
    }
    let reader = arrow_ipc::reader::StreamReader::try_new(Cursor::new(data), None).map_err(|e| {
        PrepError::File {
            path: file.to_owned(),
            msg: format!(
                "neither Parquet nor Arrow ({e}); expected a file written by datasets' to_parquet or \
                 save_to_disk"
            ),
        }
    })?;
    Ok((reader.schema(), Box::new(reader)))
}

/// The list in `column` at `row` as strings: string items as they are, integer ids by `names`.
fn strings(
    column: &ArrayRef,
    row: usize,
    key: &str,
    names: Option<&[String]>,
) -> std::result::Result<Vec<String>, String> {
    if column.is_null(row) {
        return Err(format!("null under {key:?} (expected a list)"));
    }
    let items = match column.data_type() {
        DataType::List(_) => column.as_list::<i32>().value(row),
        DataType::LargeList(_) => column.as_list::<i64>().value(row),
        other => return Err(format!("column {key:?} is {other}, not a list")),
    };
    if let Some(i) = (0..items.len()).find(|&i| items.is_null(i)) {
        return Err(format!("key {key:?}, item {i} is null"));
    }
    match items.data_type() {
        DataType::Utf8 => Ok(items
            .as_string::<i32>()
            .iter()
            .flatten()
            .map(str::to_owned)
            .collect()),
        DataType::LargeUtf8 => Ok(items
            .as_string::<i64>()
            .iter()
            .flatten()
            .map(str::to_owned)
            .collect()),
        DataType::Utf8View => Ok(items
            .as_string_view()
            .iter()
            .flatten()
            .map(str::to_owned)
            .collect()),
        _ => ids(&items, key)?
            .into_iter()
            .enumerate()
            .map(|(i, id)| name_of(id, i, key, names))
            .collect(),
    }
}

/// Integer ids of a list's items.
fn ids(items: &ArrayRef, key: &str) -> std::result::Result<Vec<i128>, String> {
    macro_rules! widen {
        ($t:ty) => {
            Ok(items
                .as_primitive::<$t>()
                .values()
                .iter()
                .map(|&v| v as i128)
                .collect())
        };
    }
    match items.data_type() {
        DataType::Int8 => widen!(Int8Type),
        DataType::Int16 => widen!(Int16Type),
        DataType::Int32 => widen!(Int32Type),
        DataType::Int64 => widen!(Int64Type),
        DataType::UInt8 => widen!(UInt8Type),
        DataType::UInt16 => widen!(UInt16Type),
        DataType::UInt32 => widen!(UInt32Type),
        DataType::UInt64 => widen!(UInt64Type),
        other => Err(format!(
            "column {key:?} holds {other} items (expected strings or integer ClassLabel ids)"
        )),
    }
}

fn name_of(
    id: i128,
    i: usize,
    key: &str,
    names: Option<&[String]>,
) -> std::result::Result<String, String> {
    let Some(names) = names else {
        return Err(format!(
            "key {key:?}, item {i}: integer id {id} without names (no ClassLabel names for {key:?} in \
             the schema's huggingface metadata or a dataset_info.json beside it; pass --tag-names or \
             --pos-names with one name per line, in id order)"
        ));
    };
    usize::try_from(id)
        .ok()
        .and_then(|k| names.get(k))
        .cloned()
        .ok_or_else(|| {
            format!(
                "key {key:?}, item {i}: id {id} is not among the {} names",
                names.len()
            )
        })
}
