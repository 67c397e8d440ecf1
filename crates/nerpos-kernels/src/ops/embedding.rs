//! The gradient of an embedding table from the gradients of the rows a batch looked up: dense (a
//! table of a few rows: positions, POS tags; or the scatter of the head positions back to all tokens),
//! or as the rows that were used (the word embeddings: a batch touches a few hundred of a vocabulary's
//! tens of thousands of rows). Every device sums each row's contributions in the order of the batch:
//! deterministic, no atomics. The ids are the batch's, kept on the host: nothing is read back.

use candle_core::Tensor;

use crate::error::{KernelError, Result};
use crate::host::{read, tensor, zeros};
use crate::launch::{Elem, Exec, Launch, Ptr, int};
use crate::{Impl, Kernels, on_gpu};

/// Embedding-table gradients.
pub struct EmbeddingGrad;

impl EmbeddingGrad {
    /// The gradient of a table of `rows` × dim from the gradients `d` (N, dim) of the rows `ids` (N)
    /// that were looked up.
    pub fn dense(k: Kernels, ids: &[u32], d: &Tensor, rows: usize) -> Result<Tensor> {
        let dim = d.dim(1)?;
        check_rows(ids, d, rows)?;
        match k.pick(d) {
            Impl::Cpu => cpu(ids, d, rows),
            Impl::Cuda => gpu(ids, d, rows),
            Impl::Tensor => {
                let ids = Tensor::from_slice(ids, ids.len(), d.device())?;
                let zeros = Tensor::zeros((rows, dim), d.dtype(), d.device())?;
                Ok(zeros.index_add(&ids, &d.contiguous()?, 0)?)
            }
        }
    }

    /// The gradient as the rows that were looked up: the distinct `ids` (sorted) and, for each, the
    /// sum of the gradients `d` (N, dim) of its look-ups.
    pub fn rows(k: Kernels, ids: &[u32], d: &Tensor) -> Result<(Vec<u32>, Tensor)> {
        let mut distinct = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let at: Vec<u32> = ids
            .iter()
            .map(|id| distinct.binary_search(id).unwrap_or_default() as u32)
            .collect();
        let values = EmbeddingGrad::dense(k, &at, d, distinct.len())?;
        Ok((distinct, values))
    }
}

/// One id per gradient row, each naming a row of the table.
fn check_rows(ids: &[u32], d: &Tensor, rows: usize) -> Result<()> {
    let n = d.dim(0)?;
    if ids.len() != n {
        return Err(KernelError::Internal(format!(
            "an embedding gradient got {} ids for {n} gradient rows",
            ids.len()
        )));
    }
    match ids.iter().find(|&&id| id as usize >= rows) {
        Some(id) => Err(KernelError::Internal(format!(
            "an embedding gradient got id {id} for a table of {rows} rows"
        ))),
        None => Ok(()),
    }
}

fn cpu(ids: &[u32], d: &Tensor, rows: usize) -> Result<Tensor> {
    let dim = d.dim(1)?;
    let mut out = zeros(rows * dim);
    read::<f32, _>(d, |d| {
        for (i, &id) in ids.iter().enumerate() {
            let dst = &mut out[id as usize * dim..][..dim];
            dst.iter_mut()
                .zip(&d[i * dim..][..dim])
                .for_each(|(a, v)| *a += v);
        }
    })?;
    tensor(out, (rows, dim))
}

/// The source rows grouped by destination, as the kernel reads them: `rows` + 1 starts, then the
/// source rows, each destination's in increasing order (a counting sort: the CPU's summation order).
pub fn segments(ids: &[u32], rows: usize) -> Vec<u32> {
    let mut table = vec![0u32; rows + 1 + ids.len()];
    for &id in ids {
        table[id as usize + 1] += 1;
    }
    for r in 0..rows {
        table[r + 1] += table[r];
    }
    let (starts, order) = table.split_at_mut(rows + 1);
    let mut next: Vec<u32> = starts[..rows].to_vec();
    for (i, &id) in ids.iter().enumerate() {
        order[next[id as usize] as usize] = i as u32;
        next[id as usize] += 1;
    }
    table
}

fn gpu(ids: &[u32], d: &Tensor, rows: usize) -> Result<Tensor> {
    let dim = d.dim(1)?;
    let s = Elem::of(d.dtype())?;
    let table = segments(ids, rows);
    let out = on_gpu(&[Some(d)], &[(d.dtype(), rows * dim)], |e, i, o| {
        launches(e, s, [i[0], o[0]], &table, rows, dim)
    })?;
    Ok(out[0].reshape((rows, dim))?)
}

/// `out` (rows × dim) = the segment sums of `d` by `table` ([`segments`]), for `[d, out]`.
pub(crate) fn launches(
    e: &mut dyn Exec,
    s: Elem,
    [d, out]: [Ptr; 2],
    table: &[u32],
    rows: usize,
    dim: usize,
) -> Result<()> {
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    let segments = e.upload(bytemuck::cast_slice(table))?;
    let threads = dim.next_multiple_of(32).min(256) as u32;
    let blocks = int(rows, "rows")?;
    e.launch(
        Launch::new(s.kernel("segment_sum"), (blocks as u32, 1), (threads, 1))
            .arg(d)
            .arg(segments)
            .arg(out)
            .arg(int(rows, "rows")?)
            .arg(int(dim, "dim")?),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu::{self, EmuExec, HostBuf};
    use crate::ops::testing::{cpu as on_cpu, flat, random, rng};

    #[test]
    fn cpu_matches_the_tensor_op_version() {
        let ids = [3u32, 0, 3, 7, 1, 0];
        let d = on_cpu(&random(&mut rng(5), ids.len() * 4, 1.0), &[ids.len(), 4]);
        let dense = EmbeddingGrad::dense(Kernels::CpuOnly, &ids, &d, 9).unwrap();
        let reference = EmbeddingGrad::dense(Kernels::Reference, &ids, &d, 9).unwrap();
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

    #[test]
    fn ids_outside_the_table_are_refused() {
        let d = on_cpu(&[1.0; 8], &[2, 4]);
        let err = EmbeddingGrad::dense(Kernels::CpuOnly, &[0, 5], &d, 5).unwrap_err();
        assert!(
            err.to_string().contains("id 5 for a table of 5 rows"),
            "{err}"
        );
        assert!(EmbeddingGrad::dense(Kernels::CpuOnly, &[0], &d, 5).is_err());
    }

    #[test]
    fn segments_group_the_sources_by_destination_in_order() {
        // Destinations 0..5; 2 and 4 unused.
        let table = segments(&[3, 0, 3, 1, 0, 3], 5);
        assert_eq!(&table[..6], &[0, 2, 3, 3, 6, 6]);
        assert_eq!(&table[6..], &[1, 4, 3, 0, 2, 5]);
    }

    /// The launches on the emulator against the CPU kernel: repeated ids (a long segment), unused
    /// rows (written as zeros over whatever the output held), a width across the block's columns.
    #[test]
    fn emulated_launches_match_the_cpu_kernel() {
        let Some(lib) = emu::emulator("embedding::tests::emulated_launches_match_the_cpu_kernel")
        else {
            return;
        };
        let (n, rows, dim) = (90, 40, 300);
        // Every third look-up is row 0 (as [CLS] is); rows 30..40 are never looked up.
        let ids: Vec<u32> = (0..n as u32)
            .map(|i| if i % 3 == 0 { 0 } else { (i * 7) % 30 })
            .collect();
        for elem in [Elem::F32, Elem::Bf16] {
            let d = emu::seen(elem, &random(&mut rng(8), n * dim, 1.0));
            let want = flat(&cpu(&ids, &on_cpu(&d, &[n, dim]), rows).unwrap());
            let input = HostBuf::new(elem, &d);
            let mut out = HostBuf::new(elem, &vec![7.0; rows * dim]);
            let table = segments(&ids, rows);
            let ptrs = [input.ptr(), out.ptr_mut()];
            launches(&mut EmuExec::new(lib), elem, ptrs, &table, rows, dim).unwrap();
            let got = out.values();
            emu::close(
                "segment sums",
                &got,
                &emu::seen(elem, &want),
                emu::tol(elem, 1e-6, 1e-2),
            );
            assert!(
                got[30 * dim..].iter().all(|&v| v == 0.0),
                "unused rows are zero"
            );
        }
    }
}
