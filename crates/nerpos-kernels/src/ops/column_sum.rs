//! Σ over the rows of an (N, H) tensor: the gradient of a bias broadcast over rows. Deterministic on
//! every device (fixed-order partial sums, no atomics).

use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::Result;
use crate::host::{read, sum_partials, task_rows, tensor};
use crate::launch::{self, Elem, Exec, Launch, Ptr, int};
use crate::{Impl, Kernels, on_gpu};

/// The column sum of an (N, H) tensor.
pub struct ColumnSum;

impl ColumnSum {
    pub fn forward(k: Kernels, x: &Tensor) -> Result<Tensor> {
        match k.pick(x) {
            Impl::Cpu => cpu(x),
            Impl::Cuda => gpu(x),
            Impl::Tensor => reference(x),
        }
    }
}

fn cpu(x: &Tensor) -> Result<Tensor> {
    let (_, h) = x.dims2()?;
    let chunk = task_rows(h) * h;
    let partials: Vec<Vec<f32>> = read::<f32, _>(x, |x| {
        x.par_chunks(chunk)
            .map(|c| {
                let mut acc = vec![0f32; h];
                add_rows(c, &mut acc);
                acc
            })
            .collect()
    })?;
    tensor(sum_partials(partials, h), h)
}

/// `acc` (width h) plus every row of `rows`.
#[inline(always)]
fn add_rows_kernel(rows: &[f32], acc: &mut [f32]) {
    for r in rows.chunks(acc.len().max(1)) {
        acc.iter_mut().zip(r).for_each(|(a, v)| *a += v);
    }
}

crate::host::dispatch!(add_rows, add_rows_at, add_rows_kernel, (rows: &[f32], acc: &mut [f32]));

/// In f32 whatever the storage type, returned in it.
pub(crate) fn reference(x: &Tensor) -> Result<Tensor> {
    Ok(super::f32(x)?.sum(0)?.to_dtype(x.dtype())?)
}

fn gpu(x: &Tensor) -> Result<Tensor> {
    let (rows, width) = x.dims2()?;
    let s = Elem::of(x.dtype())?;
    let out = on_gpu(&[Some(x)], &[(x.dtype(), width)], |e, i, o| {
        launches(e, s, i[0], o[0], rows, width)
    })?;
    Ok(out[0].clone())
}

/// Partial sums per chunk of rows, then their fixed-order sum into `out`.
pub(crate) fn launches(
    e: &mut dyn Exec,
    s: Elem,
    x: Ptr,
    out: Ptr,
    rows: usize,
    width: usize,
) -> Result<()> {
    let (chunk, chunks) = launch::chunking(rows);
    let partial = e.scratch(chunks * width * 4)?;
    let (grid, block) = launch::per_column(width, chunks);
    e.launch(
        Launch::new(s.kernel("colsum_partial"), grid, block)
            .arg(x)
            .arg(partial)
            .arg(int(rows, "rows")?)
            .arg(int(width, "width")?)
            .arg(int(chunk, "chunk")?),
    )?;
    e.launch(launch::colsum_finish(s, partial, out, chunks, width)?)
}

/// A column pass that also writes an elementwise result (`kernel`: `gelu_bwd_cols`,
/// `dropout_bwd_cols`): `out` = [the result (rows × width); its column sums (width)], from inputs `a`
/// and `b` (`b` may be null where the kernel allows).
pub(crate) fn pass_launches(
    e: &mut dyn Exec,
    s: Elem,
    kernel: &str,
    [a, b, out]: [Ptr; 3],
    rows: usize,
    width: usize,
) -> Result<()> {
    let (chunk, chunks) = launch::chunking(rows);
    let partial = e.scratch(chunks * width * 4)?;
    let (grid, block) = launch::per_column(width, chunks);
    e.launch(
        Launch::new(s.kernel(kernel), grid, block)
            .arg(a)
            .arg(b)
            .arg(out)
            .arg(partial)
            .arg(int(rows, "rows")?)
            .arg(int(width, "width")?)
            .arg(int(chunk, "chunk")?),
    )?;
    let sums = out.offset(rows * width * s.bytes());
    e.launch(launch::colsum_finish(s, partial, sums, chunks, width)?)
}

/// Runs a column pass on the GPU: the result (rows, width) and its column sums (width).
pub(crate) fn gpu_pass(kernel: &str, a: &Tensor, b: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    let (rows, width) = a.dims2()?;
    let s = Elem::of(a.dtype())?;
    let b = b.map(|b| b.to_dtype(a.dtype())).transpose()?;
    let out = on_gpu(
        &[Some(a), b.as_ref()],
        &[(a.dtype(), (rows + 1) * width)],
        |e, i, o| pass_launches(e, s, kernel, [i[0], i[1], o[0]], rows, width),
    )?;
    let packed = out[0].reshape((rows + 1, width))?;
    Ok((packed.narrow(0, 0, rows)?, packed.get(rows)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu::{self, EmuExec, HostBuf};
    use crate::ops::testing::{cpu as host, flat, random, rng};

    #[test]
    fn cpu_kernel_matches_the_reference() {
        let x = host(&random(&mut rng(1), 1000 * 48, 1.0), &[1000, 48]);
        let (a, b) = (
            flat(&ColumnSum::forward(Kernels::CpuOnly, &x).unwrap()),
            flat(&ColumnSum::forward(Kernels::Reference, &x).unwrap()),
        );
        emu::close("column sum", &a, &b, 1e-5);
    }

    /// The launches on the emulator against the CPU kernel: 130 rows (five chunks of 32, the last
    /// one short), 300 columns (two blocks of 256), f32 and bf16.
    #[test]
    fn emulated_launches_match_the_cpu_kernel() {
        let Some(lib) = emu::emulator("column_sum::tests::emulated_launches_match_the_cpu_kernel")
        else {
            return;
        };
        // 5 chunks (fewer than the finishing block's lanes) and 35 (several per lane); widths over
        // and under a finishing block's 32 columns.
        for (rows, width) in [(130, 300), (1100, 70)] {
            check_column_sum(lib, rows, width);
        }
    }

    fn check_column_sum(lib: &'static emu::Emu, rows: usize, width: usize) {
        let x = random(&mut rng(2), rows * width, 3.0);
        for elem in [Elem::F32, Elem::Bf16] {
            let want = flat(&cpu(&host(&emu::seen(elem, &x), &[rows, width])).unwrap());
            let hx = HostBuf::new(elem, &x);
            let mut out = HostBuf::zeros(elem, width);
            let at = out.ptr_mut();
            launches(&mut EmuExec::new(lib), elem, hx.ptr(), at, rows, width).unwrap();
            // Both sides sum in f32 in different orders: the rounding grows with the rows summed.
            let tol = emu::tol(elem, 1e-5 * (rows as f32 / 256.0).max(1.0), 1e-2);
            let what = format!("column sum {rows}×{width} {elem:?}");
            emu::close(&what, &out.values(), &want, tol);
        }
    }
}
