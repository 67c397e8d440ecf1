//! Multi-tensor ops on the GPU: the sum of every gradient's squares and the AdamW update of every
//! parameter, each in a fixed number of launches however many parameters a model has (one or two
//! launches per parameter before). The tensors are cut into chunks of at most [`CHUNK`] elements
//! ([`plan`]); a block takes a chunk; the chunk table and the table of tensors are uploaded once per
//! call (host → device copies, never a read-back).

use bytemuck::{Pod, Zeroable};
use candle_core::{DType, Tensor};

use super::adamw::AdamWStep;
use crate::error::{KernelError, Result};
use crate::launch::{ADAMW_PARAM_SIZE, CHUNK_SIZE, Elem, Exec, Launch, MT_THREADS, Ptr};
use crate::on_gpu;

/// Elements per chunk: enough work per block, enough blocks for a GPU's multiprocessors.
pub const CHUNK: usize = 65_536;

/// A chunk of a tensor, as the kernels read it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Chunk {
    pub tensor: u32,
    pub pad: u32,
    pub start: u64,
    pub len: u64,
}

const _: () = assert!(std::mem::size_of::<Chunk>() == CHUNK_SIZE);

/// One parameter's entry of the AdamW launch: device addresses and its own constants.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct AdamWParam {
    pub p: u64,
    pub g: u64,
    pub m: u64,
    pub v: u64,
    /// The bf16 compute copy, or 0.
    pub h: u64,
    pub lr_wd: f32,
    pub step_size: f32,
}

const _: () = assert!(std::mem::size_of::<AdamWParam>() == ADAMW_PARAM_SIZE);

/// The chunks of tensors of `sizes` elements, in order, each at most `chunk` long (an empty tensor
/// has none).
pub fn plan(sizes: &[usize], chunk: usize) -> Vec<Chunk> {
    let chunk = chunk.max(1);
    let mut out = Vec::new();
    for (t, &n) in sizes.iter().enumerate() {
        for start in (0..n).step_by(chunk) {
            out.push(Chunk {
                tensor: t as u32,
                pad: 0,
                start: start as u64,
                len: (n - start).min(chunk) as u64,
            });
        }
    }
    out
}

/// `partial` (chunks floats) and the sum `out` (one float) of the squares of the tensors listed in
/// `table` (device addresses), for `[table, chunks, partial, out]`: two launches.
pub(crate) fn sumsq_launches(
    e: &mut dyn Exec,
    s: Elem,
    [table, chunks, partial, out]: [Ptr; 4],
    n_chunks: usize,
) -> Result<()> {
    let shared = MT_THREADS * 4;
    let blocks = n_chunks.max(1) as u32;
    e.launch(
        Launch::new(
            s.kernel("sumsq_chunks"),
            (blocks, 1),
            (MT_THREADS as u32, 1),
        )
        .shared(shared)
        .arg(table)
        .arg(chunks)
        .arg(partial),
    )?;
    e.launch(
        Launch::new("nerpos_sum_finish", (1, 1), (MT_THREADS as u32, 1))
            .shared(shared)
            .arg(partial)
            .arg(n_chunks as u64)
            .arg(out),
    )
}

/// Σ x² over every element of `tensors` (on one GPU, one storage type), left on the device (`[1]` f32).
pub fn sum_of_squares(tensors: &[&Tensor]) -> Result<Tensor> {
    let first = tensors
        .first()
        .ok_or_else(|| KernelError::Internal("a sum of squares of no tensor".into()))?;
    let s = Elem::of(first.dtype())?;
    let chunks = plan(
        &tensors.iter().map(|t| t.elem_count()).collect::<Vec<_>>(),
        CHUNK,
    );
    let chunk_table = Tensor::from_vec(
        bytemuck::cast_slice::<Chunk, u8>(&chunks).to_vec(),
        chunks.len() * CHUNK_SIZE,
        first.device(),
    )?;
    let mut inputs: Vec<Option<&Tensor>> = vec![Some(&chunk_table)];
    inputs.extend(tensors.iter().map(|t| Some(*t)));
    let out = on_gpu(
        &inputs,
        &[(DType::F32, chunks.len().max(1)), (DType::F32, 1)],
        |e, i, o| {
            let addresses: Vec<u64> = i[1..].iter().map(|p| p.0).collect();
            let table = upload(e, bytemuck::cast_slice(&addresses))?;
            sumsq_launches(e, s, [table, i[0], o[0], o[1]], chunks.len())
        },
    )?;
    Ok(out[1].clone())
}

/// Copies `bytes` into scratch memory of the executor (a host → device copy on a GPU): a small table
/// a launch reads.
fn upload(e: &mut dyn Exec, bytes: &[u8]) -> Result<Ptr> {
    e.upload(bytes)
}

/// The kernels one optimiser step launches for parameters of `sizes` elements (gradients of `elem`):
/// the gradient norm's and AdamW's, planned and checked as on a GPU — the same few for any model.
pub fn optimiser_launches(sizes: &[usize], elem: Elem) -> Result<Vec<String>> {
    let chunks = plan(sizes, CHUNK).len();
    let mut e = crate::launch::Counter::default();
    let table = e.upload(&vec![0u8; sizes.len() * 8])?;
    let chunk_table = e.upload(&vec![0u8; chunks * CHUNK_SIZE])?;
    let partial = e.scratch(chunks * 4)?;
    let out = e.scratch(4)?;
    sumsq_launches(&mut e, elem, [table, chunk_table, partial, out], chunks)?;
    let params = e.upload(&vec![0u8; sizes.len() * ADAMW_PARAM_SIZE])?;
    let c = AdamWStep {
        grad_scale: 1.0,
        lr_wd: 0.0,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step_size: 1e-3,
        bc2_sqrt: 1.0,
    };
    adamw_launches(&mut e, elem, &c, [params, chunk_table, out], chunks)?;
    Ok(e.launched)
}

/// One parameter's update in an [`adamw_all`] call.
pub struct ParamUpdate<'a> {
    pub p: &'a Tensor,
    /// The gradient (f32 or bf16, all the same in one call).
    pub g: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
    /// The bf16 compute copy to write, if any.
    pub half: Option<&'a Tensor>,
    pub lr_wd: f32,
    pub step_size: f32,
}

/// The launch updating every chunk of every parameter of the table `params` (device addresses of
/// [`AdamWParam`]s), for `[params, chunks, clip]`.
pub(crate) fn adamw_launches(
    e: &mut dyn Exec,
    s: Elem,
    c: &AdamWStep,
    [params, chunks, clip]: [Ptr; 3],
    n_chunks: usize,
) -> Result<()> {
    e.launch(
        Launch::new(
            s.kernel("adamw_chunks"),
            (n_chunks.max(1) as u32, 1),
            (MT_THREADS as u32, 1),
        )
        .arg(params)
        .arg(chunks)
        .arg(clip)
        .arg(c.grad_scale)
        .arg(c.beta1)
        .arg(c.beta2)
        .arg(c.eps)
        .arg(c.bc2_sqrt),
    )
}

/// AdamW on every parameter of `updates` in one launch (their GPU), in place, with the constants of
/// `c` (its `lr_wd` and `step_size` are each parameter's own) and the clipping factor `clip` (`[1]` f32
/// on the GPU).
pub fn adamw_all(updates: &[ParamUpdate], c: &AdamWStep, clip: &Tensor) -> Result<()> {
    let Some(first) = updates.first() else {
        return Ok(());
    };
    let s = Elem::of(first.g.dtype())?;
    for u in updates {
        let own = [u.p, u.m, u.v].into_iter().chain(u.half);
        if own.clone().any(|t| !t.is_contiguous()) || u.g.dtype() != first.g.dtype() {
            return Err(KernelError::Internal(
                "AdamW updates contiguous tensors in place, gradients of one dtype".into(),
            ));
        }
    }
    let chunks = plan(
        &updates.iter().map(|u| u.p.elem_count()).collect::<Vec<_>>(),
        CHUNK,
    );
    let chunk_table = Tensor::from_vec(
        bytemuck::cast_slice::<Chunk, u8>(&chunks).to_vec(),
        chunks.len() * CHUNK_SIZE,
        first.p.device(),
    )?;
    let grads: Vec<Tensor> = updates
        .iter()
        .map(|u| u.g.contiguous())
        .collect::<candle_core::Result<_>>()?;
    let mut inputs: Vec<Option<&Tensor>> = vec![Some(&chunk_table), Some(clip)];
    for (u, g) in updates.iter().zip(&grads) {
        inputs.extend([Some(u.p), Some(g), Some(u.m), Some(u.v), u.half]);
    }
    on_gpu(&inputs, &[], |e, i, _| {
        let params: Vec<AdamWParam> = updates
            .iter()
            .zip(i[2..].chunks(5))
            .map(|(u, a)| AdamWParam {
                p: a[0].0,
                g: a[1].0,
                m: a[2].0,
                v: a[3].0,
                h: a[4].0,
                lr_wd: u.lr_wd,
                step_size: u.step_size,
            })
            .collect();
        let table = upload(e, bytemuck::cast_slice(&params))?;
        adamw_launches(e, s, c, [table, i[0], i[1]], chunks.len())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu::{self, EmuExec, HostBuf};
    use crate::ops::testing::{random, rng};

    #[test]
    fn chunks_cover_every_element_once_in_order() {
        let c = plan(&[5, 0, 12], 4);
        let spans: Vec<(u32, u64, u64)> = c.iter().map(|c| (c.tensor, c.start, c.len)).collect();
        assert_eq!(
            spans,
            vec![(0, 0, 4), (0, 4, 1), (2, 0, 4), (2, 4, 4), (2, 8, 4)]
        );
        // The number of launches does not depend on how many tensors there are: only the table grows.
        assert_eq!(plan(&vec![3; 100], CHUNK).len(), 100);
    }

    const SIZES: [usize; 4] = [30, 1, 64, 9];

    /// The gradients as each element type, as the kernels see them and as device buffers.
    fn gradients(r: &mut rand::rngs::SmallRng, elem: Elem) -> (Vec<Vec<f32>>, Vec<HostBuf>) {
        let grads: Vec<Vec<f32>> = SIZES.iter().map(|&n| random(r, n, 2.0)).collect();
        let seen = grads.iter().map(|g| emu::seen(elem, g)).collect();
        let host = grads.iter().map(|g| HostBuf::new(elem, g)).collect();
        (seen, host)
    }

    /// The sum of squares over several tensors (chunks of 7 here: many chunks, short last ones) on
    /// the emulator, against the CPU, in f32 and bf16.
    #[test]
    fn emulated_sum_of_squares_matches_the_cpu() {
        let Some(lib) =
            emu::emulator("multi_tensor::tests::emulated_sum_of_squares_matches_the_cpu")
        else {
            return;
        };
        let mut r = rng(21);
        for elem in [Elem::F32, Elem::Bf16] {
            let (seen, host) = gradients(&mut r, elem);
            let chunks = plan(&SIZES, 7);
            let want: f64 = seen
                .iter()
                .flatten()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum();
            let addresses: Vec<u64> = host.iter().map(|h| h.ptr().0).collect();
            let (mut partial, mut out) = (vec![0f32; chunks.len()], vec![0f32; 1]);
            let ptrs = [
                emu::ptr(&addresses),
                emu::ptr(&chunks),
                emu::ptr_mut(&mut partial),
                emu::ptr_mut(&mut out),
            ];
            sumsq_launches(&mut EmuExec::new(lib), elem, ptrs, chunks.len()).unwrap();
            assert!(
                (f64::from(out[0]) - want).abs() <= 1e-5 * want,
                "{elem:?}: {} vs {want}",
                out[0]
            );
        }
    }

    /// One AdamW launch over several tensors, every tensor its own learning rate, the bf16 copy
    /// written for two of them: on the emulator, against the CPU update.
    #[test]
    fn emulated_multi_tensor_adamw_matches_the_cpu() {
        let Some(lib) =
            emu::emulator("multi_tensor::tests::emulated_multi_tensor_adamw_matches_the_cpu")
        else {
            return;
        };
        let mut r = rng(22);
        let c = AdamWStep {
            grad_scale: 0.5,
            lr_wd: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step_size: 0.0,
            bc2_sqrt: 0.03,
        };
        for elem in [Elem::F32, Elem::Bf16] {
            let (seen, host) = gradients(&mut r, elem);
            let chunks = plan(&SIZES, 7);
            let mut ps: Vec<Vec<f32>> = SIZES.iter().map(|&n| random(&mut r, n, 1.0)).collect();
            let mut ms: Vec<Vec<f32>> = SIZES.iter().map(|&n| vec![0.01; n]).collect();
            let mut vs: Vec<Vec<f32>> = SIZES.iter().map(|&n| vec![0.02; n]).collect();
            let mut hs: Vec<Vec<half::bf16>> =
                SIZES.iter().map(|&n| vec![half::bf16::ZERO; n]).collect();
            let (mut wp, mut wm, mut wv) = (ps.clone(), ms.clone(), vs.clone());
            let mut params = Vec::new();
            for k in 0..SIZES.len() {
                let own = AdamWStep {
                    lr_wd: 1e-4 * k as f32,
                    step_size: 1e-3 * (k + 1) as f32,
                    ..c
                };
                // The launch's clip factor (2) times its grad_scale.
                let scaled = AdamWStep {
                    grad_scale: 0.5 * 2.0,
                    ..own
                };
                scaled.cpu(&mut wp[k], &seen[k], &mut wm[k], &mut wv[k]);
                let copy = (k % 2 == 0).then(|| emu::ptr_mut(&mut hs[k]).0);
                params.push(AdamWParam {
                    p: emu::ptr_mut(&mut ps[k]).0,
                    g: host[k].ptr().0,
                    m: emu::ptr_mut(&mut ms[k]).0,
                    v: emu::ptr_mut(&mut vs[k]).0,
                    h: copy.unwrap_or(0),
                    lr_wd: own.lr_wd,
                    step_size: own.step_size,
                });
            }
            // A non-finite factor (the trainer's guard of a NaN step) leaves everything as it was.
            let before = (ps.clone(), ms.clone(), vs.clone(), hs.clone());
            for guard in [f32::NAN, f32::INFINITY] {
                let ptrs = [emu::ptr(&params), emu::ptr(&chunks), emu::ptr(&[guard])];
                adamw_launches(&mut EmuExec::new(lib), elem, &c, ptrs, chunks.len()).unwrap();
                assert!(
                    (&ps, &ms, &vs, &hs) == (&before.0, &before.1, &before.2, &before.3),
                    "{elem:?}: a guarded step ({guard}) wrote"
                );
            }
            let clip = [2.0f32];
            let ptrs = [emu::ptr(&params), emu::ptr(&chunks), emu::ptr(&clip)];
            adamw_launches(&mut EmuExec::new(lib), elem, &c, ptrs, chunks.len()).unwrap();
            for k in 0..SIZES.len() {
                emu::close(&format!("weights {k} {elem:?}"), &ps[k], &wp[k], 1e-6);
                emu::close(&format!("first moment {k} {elem:?}"), &ms[k], &wm[k], 1e-6);
                emu::close(&format!("second moment {k} {elem:?}"), &vs[k], &wv[k], 1e-6);
                if k % 2 == 0 {
                    let cast: Vec<u16> = ps[k]
                        .iter()
                        .map(|&x| half::bf16::from_f32(x).to_bits())
                        .collect();
                    assert_eq!(hs[k].iter().map(|h| h.to_bits()).collect::<Vec<_>>(), cast);
                }
            }
        }
    }
}
