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
            Grad::Rows { ids, values, rows } => place_rows(ids, values, *rows),
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
    let mut out: Option<Tensor> = None;
    for (part_ids, values) in parts {
        let at: Vec<u32> = part_ids
            .iter()
            .map(|id| {
                ids.binary_search(id)
                    .map(|p| p as u32)
                    .map_err(|_| DistError::Tensor(format!("row {id} is not among the ids")))
            })
            .collect::<Result<_>>()?;
        let placed = place_rows(&at, values, ids.len())?;
        out = Some(match out {
            None => placed,
            Some(sum) => (sum + placed)?,
        });
    }
    out.ok_or_else(|| DistError::Tensor("scatter_rows needs a part".into()))
}

/// A `(positions, width)` tensor whose row `at[i]` is row i of `values` (the `at` distinct) and whose
/// other rows are zero. A gather — `index_select` of `values` with a zero row appended, one thread
/// per element on a GPU — rather than an `index_add` onto zeros, which candle's GPU kernel runs as
/// one thread per column looping over every row (2 ms of a BERT-base step for the word table). The
/// values are copied, not added to zero, so they keep their bits.
fn place_rows(at: &[u32], values: &Tensor, positions: usize) -> Result<Tensor> {
    let (n, width) = values.dims2()?;
    if at.len() != n {
        return Err(DistError::Tensor(format!(
            "{} row positions for {n} rows of values",
            at.len()
        )));
    }
    // Every position reads the appended zero row (index n) unless a row of values sits there.
    let mut source = vec![n as u32; positions];
    for (i, &p) in at.iter().enumerate() {
        let slot = source.get_mut(p as usize).ok_or_else(|| {
            DistError::Tensor(format!("row {p} is outside a table of {positions} rows"))
        })?;
        *slot = i as u32;
    }
    let zero = Tensor::zeros((1, width), values.dtype(), values.device())?;
    let padded = Tensor::cat(&[values, &zero], 0)?;
    let source = Tensor::from_vec(source, positions, values.device())?;
    Ok(padded.index_select(&source, 0)?)
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

    /// The gather gives what summing onto zeros (candle's `index_add`, the former implementation)
    /// gives, in f32 and bf16, for parts that share rows.
    #[test]
    fn placed_rows_equal_an_index_add_onto_zeros() {
        let dev = Device::Cpu;
        let values = |n: usize, seed: f32| {
            let v: Vec<f32> = (0..n * 3).map(|i| (i as f32 * 0.37 + seed).sin()).collect();
            Tensor::from_vec(v, (n, 3), &dev).unwrap()
        };
        let (ia, ib): (Vec<u32>, Vec<u32>) = (vec![0, 2, 7, 9], vec![2, 3, 9, 11]);
        let ids = union(&ia, &ib);
        for dtype in [DType::F32, DType::BF16] {
            let (va, vb) = (values(4, 0.5), values(4, 1.5));
            let (va, vb) = (va.to_dtype(dtype).unwrap(), vb.to_dtype(dtype).unwrap());
            let ours = scatter_rows(&ids, &[(&ia, &va), (&ib, &vb)]).unwrap();
            let pos = |part: &[u32]| -> Tensor {
                let at: Vec<u32> = part
                    .iter()
                    .map(|id| ids.binary_search(id).unwrap() as u32)
                    .collect();
                Tensor::from_vec(at, part.len(), &dev).unwrap()
            };
            let zeros = Tensor::zeros((ids.len(), 3), dtype, &dev).unwrap();
            let reference = zeros
                .index_add(&pos(&ia), &va, 0)
                .unwrap()
                .index_add(&pos(&ib), &vb, 0)
                .unwrap();
            let flat = |t: &Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            assert_eq!(
                flat(&ours).to_vec1::<f32>().unwrap(),
                flat(&reference).to_vec1::<f32>().unwrap()
            );
            let dense = Grad::Rows {
                ids: ia.clone(),
                values: va.clone(),
                rows: 12,
            };
            let reference = Tensor::zeros((12, 3), dtype, &dev)
                .unwrap()
                .index_add(&Tensor::new(ia.as_slice(), &dev).unwrap(), &va, 0)
                .unwrap();
            assert_eq!(
                flat(&dense.to_dense().unwrap()).to_vec1::<f32>().unwrap(),
                flat(&reference).to_vec1::<f32>().unwrap()
            );
        }
    }

    /// A row id outside the table is refused, not a panic.
    #[test]
    fn a_row_outside_the_table_is_an_error() {
        let g = Grad::Rows {
            ids: vec![1, 6],
            values: Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
            rows: 6,
        };
        let err = g.to_dense().unwrap_err().to_string();
        assert!(err.contains("row 6 is outside a table of 6 rows"), "{err}");
    }
}
