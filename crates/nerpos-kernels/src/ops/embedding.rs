//! The gradient of an embedding table from the gradients of the rows a batch looked up: dense (a
//! table of a few rows: positions, POS tags), or as the rows that were used (the word embeddings:
//! a batch touches a few hundred of a vocabulary's tens of thousands of rows).

use candle_core::Tensor;

use crate::error::Result;
use crate::host::{read, tensor};
use crate::{Impl, Kernels};

/// Embedding-table gradients.
pub struct EmbeddingGrad;

impl EmbeddingGrad {
    /// The gradient of a table of `rows` × dim from the gradients `d` (N, dim) of the rows `ids` (N,
    /// u32) that were looked up.
    pub fn dense(k: Kernels, ids: &Tensor, d: &Tensor, rows: usize) -> Result<Tensor> {
        let dim = d.dim(1)?;
        if k.pick(d) != Impl::Cpu {
            let zeros = Tensor::zeros((rows, dim), d.dtype(), d.device())?;
            return Ok(zeros.index_add(ids, &d.contiguous()?, 0)?);
        }
        let mut out = vec![0f32; rows * dim];
        read::<u32, _>(ids, |ids| {
            read::<f32, _>(d, |d| {
                for (i, &id) in ids.iter().enumerate() {
                    let dst = &mut out[id as usize * dim..][..dim];
                    dst.iter_mut()
                        .zip(&d[i * dim..][..dim])
                        .for_each(|(a, v)| *a += v);
                }
            })
        })??;
        tensor(out, (rows, dim))
    }

    /// The gradient as the rows that were looked up: the distinct `ids` (sorted) and, for each, the
    /// sum of the gradients `d` (N, dim) of its look-ups. The ids come from the host (the batch keeps
    /// them there): nothing is read back from a GPU.
    pub fn rows(k: Kernels, ids: &[u32], d: &Tensor) -> Result<(Vec<u32>, Tensor)> {
        let dim = d.dim(1)?;
        let mut distinct = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let at: Vec<u32> = ids
            .iter()
            .map(|id| distinct.binary_search(id).unwrap_or_default() as u32)
            .collect();
        if k.pick(d) != Impl::Cpu {
            let at = Tensor::from_vec(at, ids.len(), d.device())?;
            let zeros = Tensor::zeros((distinct.len(), dim), d.dtype(), d.device())?;
            return Ok((distinct, zeros.index_add(&at, &d.contiguous()?, 0)?));
        }
        let mut out = vec![0f32; distinct.len() * dim];
        read::<f32, _>(d, |d| {
            for (i, &row) in at.iter().enumerate() {
                let dst = &mut out[row as usize * dim..][..dim];
                dst.iter_mut()
                    .zip(&d[i * dim..][..dim])
                    .for_each(|(a, v)| *a += v);
            }
        })?;
        let rows = distinct.len();
        Ok((distinct, tensor(out, (rows, dim))?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::emu;
    use crate::ops::testing::{cpu, flat, random, rng};

    #[test]
    fn cpu_matches_the_tensor_op_version() {
        let ids = [3u32, 0, 3, 7, 1, 0];
        let d = cpu(&random(&mut rng(5), ids.len() * 4, 1.0), &[ids.len(), 4]);
        let idt = Tensor::from_slice(&ids, ids.len(), &Device::Cpu).unwrap();
        let dense = EmbeddingGrad::dense(Kernels::CpuOnly, &idt, &d, 9).unwrap();
        let reference = EmbeddingGrad::dense(Kernels::Reference, &idt, &d, 9).unwrap();
        emu::close("dense", &flat(&dense), &flat(&reference), 1e-6);
        let (rows, values) = EmbeddingGrad::rows(Kernels::CpuOnly, &ids, &d).unwrap();
        let (rrows, rvalues) = EmbeddingGrad::rows(Kernels::Reference, &ids, &d).unwrap();
        assert_eq!(rows, vec![0, 1, 3, 7]);
        assert_eq!(rows, rrows);
        emu::close("rows", &flat(&values), &flat(&rvalues), 1e-6);
        let d = flat(&dense);
        for (k, &r) in rows.iter().enumerate() {
            emu::close(
                "a row",
                &flat(&values)[k * 4..(k + 1) * 4],
                &d[r as usize * 4..][..4],
                1e-6,
            );
        }
    }
}
