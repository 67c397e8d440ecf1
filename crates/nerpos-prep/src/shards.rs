//! The Parquet shard format: one row per window of a sentence. Its columns are defined here and only
//! here; [`write`] and [`read_batch`] are the two directions.

use std::path::Path;
use std::sync::Arc;

use arrow_array::types::{ArrowPrimitiveType, Int32Type, UInt8Type, UInt16Type, UInt32Type};
use arrow_array::{Array, ArrayRef, ListArray, PrimitiveArray, RecordBatch, StringArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use crate::error::{PrepError, Result};
use crate::manifest::ShardInfo;

/// One window of a sentence, as stored. Strings are `S`: owned when read back, borrowed from the
/// corpus when written (a million words need not be copied twice).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row<S = String> {
    /// Position of the sentence in the source corpus (0-based).
    pub sentence_index: u32,
    /// The sentence's id in the source (`Sentence: 12` in GMB, the sentence number in CoNLL).
    pub sentence_id: S,
    /// Line of the sentence's first token in the source.
    pub source_line: u32,
    pub window: u16,
    pub num_windows: u16,
    /// Sentence-level index of the first word in this window; `words[i]` is word `word_start + i`.
    pub word_start: u32,
    /// Words `label_start..label_end` (sentence-level) carry their labels in this window; across a
    /// sentence's windows these ranges partition its words, so overlap is never counted twice.
    pub label_start: u32,
    pub label_end: u32,
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u8>,
    pub labels: Vec<i32>,
    pub pos_ids: Vec<u32>,
    /// Sentence-level word index of each sub-word; -1 for special tokens.
    pub word_ids: Vec<i32>,
    /// The window's words, their POS tags and (final) tags, as in the source.
    pub words: Vec<S>,
    pub pos: Vec<S>,
    pub tags: Vec<S>,
}

pub mod col {
    pub const SENTENCE_INDEX: &str = "sentence_index";
    pub const SENTENCE_ID: &str = "sentence_id";
    pub const SOURCE_LINE: &str = "source_line";
    pub const WINDOW: &str = "window";
    pub const NUM_WINDOWS: &str = "num_windows";
    pub const WORD_START: &str = "word_start";
    pub const LABEL_START: &str = "label_start";
    pub const LABEL_END: &str = "label_end";
    pub const INPUT_IDS: &str = "input_ids";
    pub const ATTENTION_MASK: &str = "attention_mask";
    pub const LABELS: &str = "labels";
    pub const POS_IDS: &str = "pos_ids";
    pub const WORD_IDS: &str = "word_ids";
    pub const WORDS: &str = "words";
    pub const POS: &str = "pos";
    pub const TAGS: &str = "tags";
    /// The text columns, which training does not need to read.
    pub const TEXT: [&str; 4] = [SENTENCE_ID, WORDS, POS, TAGS];
}

fn list_of(name: &str, item: DataType) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", item, false))),
        false,
    )
}

/// The Arrow schema of a shard.
pub fn schema() -> SchemaRef {
    use DataType::*;
    Arc::new(Schema::new(vec![
        Field::new(col::SENTENCE_INDEX, UInt32, false),
        Field::new(col::SENTENCE_ID, Utf8, false),
        Field::new(col::SOURCE_LINE, UInt32, false),
        Field::new(col::WINDOW, UInt16, false),
        Field::new(col::NUM_WINDOWS, UInt16, false),
        Field::new(col::WORD_START, UInt32, false),
        Field::new(col::LABEL_START, UInt32, false),
        Field::new(col::LABEL_END, UInt32, false),
        list_of(col::INPUT_IDS, UInt32),
        list_of(col::ATTENTION_MASK, UInt8),
        list_of(col::LABELS, Int32),
        list_of(col::POS_IDS, UInt32),
        list_of(col::WORD_IDS, Int32),
        list_of(col::WORDS, Utf8),
        list_of(col::POS, Utf8),
        list_of(col::TAGS, Utf8),
    ]))
}

fn scalar<T: ArrowPrimitiveType, S>(rows: &[Row<S>], f: impl Fn(&Row<S>) -> T::Native) -> ArrayRef {
    Arc::new(PrimitiveArray::<T>::from_iter_values(rows.iter().map(f)))
}

fn offsets<S>(rows: &[Row<S>], len: impl Fn(&Row<S>) -> usize) -> OffsetBuffer<i32> {
    OffsetBuffer::from_lengths(rows.iter().map(len))
}

fn list<T: ArrowPrimitiveType, S>(
    rows: &[Row<S>],
    f: impl Fn(&Row<S>) -> &[T::Native],
) -> ArrayRef {
    let values =
        PrimitiveArray::<T>::from_iter_values(rows.iter().flat_map(|r| f(r).iter().copied()));
    let field = Arc::new(Field::new("item", T::DATA_TYPE, false));
    Arc::new(ListArray::new(
        field,
        offsets(rows, |r| f(r).len()),
        Arc::new(values),
        None,
    ))
}

fn string_list<S: AsRef<str>>(rows: &[Row<S>], f: impl Fn(&Row<S>) -> &[S]) -> ArrayRef {
    let values = StringArray::from_iter_values(rows.iter().flat_map(|r| f(r).iter()));
    let field = Arc::new(Field::new("item", DataType::Utf8, false));
    Arc::new(ListArray::new(
        field,
        offsets(rows, |r| f(r).len()),
        Arc::new(values),
        None,
    ))
}

/// Rows to an Arrow record batch in [`schema`]'s layout.
pub fn to_batch<S: AsRef<str>>(
    rows: &[Row<S>],
) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        scalar::<UInt32Type, _>(rows, |r| r.sentence_index),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.sentence_id),
        )),
        scalar::<UInt32Type, _>(rows, |r| r.source_line),
        scalar::<UInt16Type, _>(rows, |r| r.window),
        scalar::<UInt16Type, _>(rows, |r| r.num_windows),
        scalar::<UInt32Type, _>(rows, |r| r.word_start),
        scalar::<UInt32Type, _>(rows, |r| r.label_start),
        scalar::<UInt32Type, _>(rows, |r| r.label_end),
        list::<UInt32Type, _>(rows, |r| &r.input_ids),
        list::<UInt8Type, _>(rows, |r| &r.attention_mask),
        list::<Int32Type, _>(rows, |r| &r.labels),
        list::<UInt32Type, _>(rows, |r| &r.pos_ids),
        list::<Int32Type, _>(rows, |r| &r.word_ids),
        string_list(rows, |r| &r.words),
        string_list(rows, |r| &r.pos),
        string_list(rows, |r| &r.tags),
    ];
    RecordBatch::try_new(schema(), columns)
}

/// Rows per Parquet row group: the unit a reader decodes at a time, so its memory stays small.
pub const ROW_GROUP_ROWS: usize = 1024;

/// Writes `rows` as one zstd-compressed Parquet file at `path` (`dir`/`file`), returning its entry for
/// the manifest. The bytes depend only on the rows, so equal inputs give equal files.
pub fn write<S: AsRef<str>>(dir: &Path, file: &str, rows: &[Row<S>]) -> Result<ShardInfo> {
    let path = dir.join(file);
    let batch = to_batch(rows).map_err(|source| PrepError::Arrow {
        path: path.clone(),
        source,
    })?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid zstd level"),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let parquet_err = |source| PrepError::Parquet {
        path: path.clone(),
        source,
    };
    let mut writer =
        ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props)).map_err(parquet_err)?;
    writer.write(&batch).map_err(parquet_err)?;
    let bytes = writer.into_inner().map_err(parquet_err)?;
    std::fs::write(&path, &bytes).map_err(|e| PrepError::io(&path, e))?;
    Ok(ShardInfo {
        file: file.to_owned(),
        rows: rows.len(),
        bytes: bytes.len() as u64,
        sha256: format!("{:x}", Sha256::digest(&bytes)),
    })
}

fn column<'a, A: Array + 'static>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<Option<&'a A>> {
    let Some(array) = batch.column_by_name(name) else {
        return Ok(None);
    };
    array.as_any().downcast_ref::<A>().map(Some).ok_or_else(|| {
        PrepError::dataset(
            path,
            format!("column {name} has type {}", array.data_type()),
        )
    })
}

fn scalars<T: ArrowPrimitiveType>(
    batch: &RecordBatch,
    name: &str,
    path: &Path,
    mut set: impl FnMut(usize, T::Native),
) -> Result<()> {
    if let Some(a) = column::<PrimitiveArray<T>>(batch, name, path)? {
        a.values().iter().enumerate().for_each(|(i, &v)| set(i, v));
    }
    Ok(())
}

fn lists<T: ArrowPrimitiveType>(
    batch: &RecordBatch,
    name: &str,
    path: &Path,
    mut set: impl FnMut(usize, &[T::Native]),
) -> Result<()> {
    if let Some(a) = column::<ListArray>(batch, name, path)? {
        let values = a
            .values()
            .as_any()
            .downcast_ref::<PrimitiveArray<T>>()
            .ok_or_else(|| {
                PrepError::dataset(path, format!("column {name} has the wrong item type"))
            })?;
        for (i, w) in a.offsets().windows(2).enumerate() {
            set(i, &values.values()[w[0] as usize..w[1] as usize]);
        }
    }
    Ok(())
}

fn string_lists(
    batch: &RecordBatch,
    name: &str,
    path: &Path,
    mut set: impl FnMut(usize, Vec<String>),
) -> Result<()> {
    if let Some(a) = column::<ListArray>(batch, name, path)? {
        let values = a
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| {
                PrepError::dataset(path, format!("column {name} has the wrong item type"))
            })?;
        for (i, w) in a.offsets().windows(2).enumerate() {
            set(
                i,
                (w[0] as usize..w[1] as usize)
                    .map(|j| values.value(j).to_owned())
                    .collect(),
            );
        }
    }
    Ok(())
}

/// Decodes a record batch read from `path` back into rows. Columns left out of the read (a projection)
/// stay empty/zero in the rows.
pub fn read_batch(batch: &RecordBatch, path: &Path) -> Result<Vec<Row>> {
    let mut rows = vec![Row::default(); batch.num_rows()];
    scalars::<UInt32Type>(batch, col::SENTENCE_INDEX, path, |i, v| {
        rows[i].sentence_index = v
    })?;
    if let Some(a) = column::<StringArray>(batch, col::SENTENCE_ID, path)? {
        for (row, v) in rows.iter_mut().zip(a.iter()) {
            row.sentence_id = v.unwrap_or_default().to_owned();
        }
    }
    scalars::<UInt32Type>(batch, col::SOURCE_LINE, path, |i, v| {
        rows[i].source_line = v
    })?;
    scalars::<UInt16Type>(batch, col::WINDOW, path, |i, v| rows[i].window = v)?;
    scalars::<UInt16Type>(batch, col::NUM_WINDOWS, path, |i, v| {
        rows[i].num_windows = v
    })?;
    scalars::<UInt32Type>(batch, col::WORD_START, path, |i, v| rows[i].word_start = v)?;
    scalars::<UInt32Type>(batch, col::LABEL_START, path, |i, v| {
        rows[i].label_start = v
    })?;
    scalars::<UInt32Type>(batch, col::LABEL_END, path, |i, v| rows[i].label_end = v)?;
    lists::<UInt32Type>(batch, col::INPUT_IDS, path, |i, v| {
        rows[i].input_ids = v.to_vec()
    })?;
    lists::<UInt8Type>(batch, col::ATTENTION_MASK, path, |i, v| {
        rows[i].attention_mask = v.to_vec()
    })?;
    lists::<Int32Type>(batch, col::LABELS, path, |i, v| rows[i].labels = v.to_vec())?;
    lists::<UInt32Type>(batch, col::POS_IDS, path, |i, v| {
        rows[i].pos_ids = v.to_vec()
    })?;
    lists::<Int32Type>(batch, col::WORD_IDS, path, |i, v| {
        rows[i].word_ids = v.to_vec()
    })?;
    string_lists(batch, col::WORDS, path, |i, v| rows[i].words = v)?;
    string_lists(batch, col::POS, path, |i, v| rows[i].pos = v)?;
    string_lists(batch, col::TAGS, path, |i, v| rows[i].tags = v)?;
    Ok(rows)
}
