//! Reading a prepared dataset: open and check it, then stream one split's rows for rank `r` of `w`.

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{PrepError, Result};
use crate::manifest::{Manifest, ShardInfo, Split};
use crate::shards::{self, Row, col};

/// Which columns to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columns {
    /// Everything, text included (prediction, inspection).
    All,
    /// Ids, masks, labels and positions only (training): skips decoding the words and tags.
    Model,
}

/// One process's share of a split: rank `rank` of `world`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub rank: usize,
    pub world: usize,
}

impl Part {
    pub const WHOLE: Part = Part { rank: 0, world: 1 };

    /// Rows `[lo, hi)` of `n`: contiguous blocks whose sizes differ by at most one, disjoint across
    /// ranks and together all rows. Contiguous, so a rank reads whole row groups and skips the rest.
    pub fn range(self, n: usize) -> (usize, usize) {
        (n * self.rank / self.world, n * (self.rank + 1) / self.world)
    }
}

/// An opened dataset directory.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Dataset {
    /// Reads the manifest and checks that every shard it lists exists with its recorded size.
    pub fn open(dir: &Path) -> Result<Dataset> {
        let manifest = Manifest::read(dir)?;
        for split in Split::ALL {
            for shard in &manifest.splits.get(split).shards {
                let path = dir.join(&shard.file);
                let meta = std::fs::metadata(&path).map_err(|e| PrepError::io(&path, e))?;
                if meta.len() != shard.bytes {
                    return Err(PrepError::dataset(
                        dir,
                        format!(
                            "{} is {} bytes; the manifest says {}",
                            shard.file,
                            meta.len(),
                            shard.bytes
                        ),
                    ));
                }
            }
        }
        Ok(Dataset {
            dir: dir.to_owned(),
            manifest,
        })
    }

    /// Recomputes every shard's SHA-256 and compares with the manifest.
    pub fn verify(&self) -> Result<()> {
        let shards: Vec<&ShardInfo> = Split::ALL
            .iter()
            .flat_map(|&s| &self.manifest.splits.get(s).shards)
            .collect();
        shards.par_iter().try_for_each(|shard| {
            let path = self.dir.join(&shard.file);
            let bytes = std::fs::read(&path).map_err(|e| PrepError::io(&path, e))?;
            let sum = format!("{:x}", Sha256::digest(&bytes));
            if sum != shard.sha256 {
                return Err(PrepError::dataset(
                    &self.dir,
                    format!(
                        "{}: checksum {sum} differs from the manifest's {} (corrupt or modified)",
                        shard.file, shard.sha256
                    ),
                ));
            }
            Ok(())
        })
    }

    /// Number of rows (windows) in a split.
    pub fn rows(&self, split: Split) -> usize {
        self.manifest.splits.get(split).windows
    }

    /// Streams `part`'s rows of `split` in batches of at most `batch_rows`, in stored order.
    pub fn reader(
        &self,
        split: Split,
        part: Part,
        batch_rows: usize,
        columns: Columns,
    ) -> Result<RowReader> {
        if part.world == 0 || part.rank >= part.world {
            return Err(PrepError::Options(format!(
                "rank {} of world {} does not exist",
                part.rank, part.world
            )));
        }
        let shards = &self.manifest.splits.get(split).shards;
        let total: usize = shards.iter().map(|s| s.rows).sum();
        let (lo, hi) = part.range(total);
        let mut pending = Vec::new();
        let mut start = 0;
        for shard in shards {
            let (a, b) = (lo.max(start), hi.min(start + shard.rows));
            if a < b {
                pending.push((self.dir.join(&shard.file), a - start, b - a));
            }
            start += shard.rows;
        }
        pending.reverse();
        Ok(RowReader {
            pending,
            current: None,
            batch_rows: batch_rows.max(1),
            columns,
        })
    }

    /// All of `part`'s rows of `split` in memory.
    pub fn read_all(&self, split: Split, part: Part, columns: Columns) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        for batch in self.reader(split, part, shards::ROW_GROUP_ROWS, columns)? {
            rows.extend(batch?);
        }
        Ok(rows)
    }
}

/// Iterator over batches of rows; see [`Dataset::reader`].
pub struct RowReader {
    /// (file, first row, row count) still to read, last first.
    pending: Vec<(PathBuf, usize, usize)>,
    current: Option<(PathBuf, ParquetRecordBatchReader)>,
    batch_rows: usize,
    columns: Columns,
}

impl RowReader {
    fn open(&self, path: &Path, offset: usize, limit: usize) -> Result<ParquetRecordBatchReader> {
        let perr = |source| PrepError::Parquet {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(|e| PrepError::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(perr)?;
        let mask = match self.columns {
            Columns::All => ProjectionMask::all(),
            Columns::Model => {
                let roots: Vec<usize> = builder
                    .schema()
                    .fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| !col::TEXT.contains(&f.name().as_str()))
                    .map(|(i, _)| i)
                    .collect();
                ProjectionMask::roots(builder.parquet_schema(), roots)
            }
        };
        builder
            .with_projection(mask)
            .with_offset(offset)
            .with_limit(limit)
            .with_batch_size(self.batch_rows)
            .build()
            .map_err(perr)
    }
}

impl Iterator for RowReader {
    type Item = Result<Vec<Row>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((path, reader)) = &mut self.current {
                match reader.next() {
                    Some(Ok(batch)) => return Some(shards::read_batch(&batch, path)),
                    Some(Err(source)) => {
                        return Some(Err(PrepError::Arrow {
                            path: path.clone(),
                            source,
                        }));
                    }
                    None => self.current = None,
                }
            }
            let (path, offset, limit) = self.pending.pop()?;
            match self.open(&path, offset, limit) {
                Ok(reader) => self.current = Some((path, reader)),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_partition_rows() {
        for n in [0, 1, 5, 17, 1000] {
            for world in 1..=7 {
                let mut next = 0;
                for rank in 0..world {
                    let (lo, hi) = Part { rank, world }.range(n);
                    assert_eq!(lo, next);
                    assert!(hi - lo <= n / world + 1);
                    next = hi;
                }
                assert_eq!(next, n);
            }
        }
    }
}
