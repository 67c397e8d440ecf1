//! A parameter's gradient: dense, or — for the word-embedding table — only the rows the batch used.
//!
//! A micro-batch touches a few hundred of a vocabulary's tens of thousands of rows. Kept dense, the
//! word-embedding gradient is the largest tensor of a step (11.7 M values for MiniLM, half of all
//! gradients): zero-filled, summed over ranks, squared for the norm and read by the optimiser every
//! step. As rows it costs what the batch used.

use candle_core::{DType, Device, Tensor};

use crate::DistError;

type Result<T> = std::result::Result<T, DistError>;

impl From<candle_core::Error> for DistError {
    fn from(e: candle_core::Error) -> DistError {
        DistError::Tensor(e.to_string())
    }
}

#[derive(Debug, Clone)]
pub enum Grad {
    Dense(Tensor),
    /// The gradient of a `(rows, width)` table, zero outside `ids` (sorted, distinct); `values` is
    /// `(ids.len(), width)`.
    Rows {
        ids: Vec<u32>,
        values: Tensor,
        rows: usize,
    },
}

impl Grad {
    /// No rows of a `(rows, width)` table.
    pub fn empty_rows(rows: usize, width: usize, dtype: DType, device: &Device) -> Result<Grad> {
        Ok(Grad::Rows {
            ids: Vec::new(),
            values: Tensor::zeros((0, width), dtype, device)?,
            rows,
        })
    }

    pub fn device(&self) -> &Device {
        match self {
            Grad::Dense(t) => t.device(),
            Grad::Rows { values, .. } => values.device(),
        }
    }

    /// The gradient as one dense tensor.
    pub fn to_dense(&self) -> Result<Tensor> {
        match self {
            Grad::Dense(t) => Ok(t.clone()),
            Grad::Rows { ids, values, rows } => {
                let width = values.dim(1)?;
                let zeros = Tensor::zeros((*rows, width), values.dtype(), values.device())?;
                if ids.is_empty() {
                    return Ok(zeros);
                }
                let idx = Tensor::from_vec(ids.clone(), ids.len(), values.device())?;
                Ok(zeros.index_add(&idx, values, 0)?)
            }
        }
    }

    /// Converted to `dtype` (f32 to accumulate micro-batches, a narrower type to all-reduce).
    pub fn to_dtype(&self, dtype: DType) -> Result<Grad> {
        Ok(match self {
            Grad::Dense(t) => Grad::Dense(t.to_dtype(dtype)?),
            Grad::Rows { ids, values, rows } => Grad::Rows {
                ids: ids.clone(),
                values: values.to_dtype(dtype)?,
                rows: *rows,
            },
        })
    }

    /// The sum of two gradients of the same parameter (in f32).
    pub fn add(&self, other: &Grad) -> Result<Grad> {
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        match (self, other) {
            (Grad::Dense(a), Grad::Dense(b)) => Ok(Grad::Dense((f32(a)? + f32(b)?)?)),
            (
                Grad::Rows {
                    ids: ia,
                    values: va,
                    rows,
                },
                Grad::Rows {
                    ids: ib,
                    values: vb,
                    ..
                },
            ) => {
                let ids = union(ia, ib);
                let values = scatter_rows(&ids, &[(ia, &f32(va)?), (ib, &f32(vb)?)])?;
                Ok(Grad::Rows {
                    ids,
                    values,
                    rows: *rows,
                })
            }
            _ => Err(DistError::Tensor(
                "adding a dense and a row gradient of one parameter".into(),
            )),
        }
    }
}

/// The sorted union of two sorted, distinct id lists.
pub fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) if x == y => {
                i += 1;
                j += 1;
                x
            }
            (Some(&x), Some(&y)) if x < y => {
                i += 1;
                x
            }
            (Some(&x), None) => {
                i += 1;
                x
            }
            (_, Some(&y)) => {
                j += 1;
                y
            }
            (None, None) => unreachable!("the loop runs while one list has ids left"),
        };
        out.push(next);
    }
    out
}

/// A `(ids.len(), width)` tensor holding, at the position of each of `ids`, the sum of the rows the
/// `parts` (each: its sorted ids ⊆ `ids`, and their values) give for it.
pub fn scatter_rows(ids: &[u32], parts: &[(&[u32], &Tensor)]) -> Result<Tensor> {
    let Some((_, first)) = parts.first() else {
        return Err(DistError::Tensor("scatter_rows needs a part".into()));
    };
    let (width, dtype, device) = (first.dim(1)?, first.dtype(), first.device().clone());
    let mut out = Tensor::zeros((ids.len(), width), dtype, &device)?;
    for (part_ids, values) in parts {
        if part_ids.is_empty() {
            continue;
        }
        let at: Vec<u32> = part_ids
            .iter()
            .map(|id| {
                ids.binary_search(id)
                    .map(|p| p as u32)
                    .map_err(|_| DistError::Tensor(format!("row {id} is not among the ids")))
            })
            .collect::<Result<_>>()?;
        let at = Tensor::from_vec(at, part_ids.len(), &device)?;
        out = out.index_add(&at, values, 0)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_add_up_and_densify() {
        let dev = Device::Cpu;
        let a = Grad::Rows {
            ids: vec![1, 4],
            values: Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap(),
            rows: 6,
        };
        let b = Grad::Rows {
            ids: vec![0, 4],
            values: Tensor::new(&[[10f32, 20.], [30., 40.]], &dev).unwrap(),
            rows: 6,
        };
        let s = a.add(&b).unwrap();
        let Grad::Rows { ids, .. } = &s else {
            panic!("rows stay rows")
        };
        assert_eq!(ids, &[0, 1, 4]);
        let dense = s.to_dense().unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(
            dense,
            vec![
                vec![10., 20.],
                vec![1., 2.],
                vec![0., 0.],
                vec![0., 0.],
                vec![33., 44.],
                vec![0., 0.]
            ]
        );
        assert_eq!(union(&[1, 3, 5], &[2, 3, 9]), vec![1, 2, 3, 5, 9]);
        assert_eq!(union(&[], &[2]), vec![2]);
    }
}
