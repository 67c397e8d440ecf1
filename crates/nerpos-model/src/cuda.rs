//! Launches of the fused CUDA kernels (`kernels/train.cu`, built into a fatbin by `build.rs`): the
//! `cuda_fwd` bodies of the custom ops in [`crate::device_ops`] and [`crate::ops`]. Each kernel exists
//! for f32 and bf16 storage; the launch shapes here are the ones `kernels/emu/harness.cpp` uses to
//! check the kernels against the CPU kernels without a GPU (`src/emu_tests.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{CudaStorage, DType, Layout, Result, Shape};

/// Cubins for sm_80 and sm_90 and PTX for later GPUs: nothing is compiled when a job starts.
static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/train.fatbin"));

/// A storage type the kernels exist for.
pub(crate) trait Elem: DeviceRepr + ValidAsZeroBits + CudaDType + Copy + 'static {
    const SUFFIX: &'static str;
}

impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
}

impl Elem for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// Calls `$f::<T>(args)` for the storage type of `$dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $f:ident($($arg:expr),*)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::BF16 => $f::<half::bf16>($($arg),*),
            other => candle_core::bail!("the fused CUDA kernels take f32 or bf16, not {other:?}"),
        }
    };
}

/// The kernel `nerpos_{name}_{suffix}` on `dev`'s context.
fn function<T: Elem>(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    loaded(dev, &format!("nerpos_{name}_{}", T::SUFFIX))
}

/// The kernel `full` (its exported name) on `dev`'s context (the module is loaded once per context).
pub(crate) fn loaded(dev: &CudaDevice, full: &str) -> Result<CudaFunction> {
    type Loaded = (
        HashMap<usize, Arc<CudaModule>>,
        HashMap<(usize, String), CudaFunction>,
    );
    static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let key = Arc::as_ptr(ctx) as usize;
    let full = full.to_owned();
    let mut guard = LOADED
        .lock()
        .map_err(|_| candle_core::Error::Msg("the CUDA kernel cache is poisoned".into()))?;
    let (modules, functions) = guard.get_or_insert_with(Default::default);
    if let Some(f) = functions.get(&(key, full.clone())) {
        return Ok(f.clone());
    }
    let module = match modules.get(&key) {
        Some(m) => m.clone(),
        None => {
            let m = ctx.load_module(Ptx::from_binary(FATBIN.to_vec())).w()?;
            modules.insert(key, m.clone());
            m
        }
    };
    let f = module.load_function(&full).w()?;
    functions.insert((key, full), f.clone());
    Ok(f)
}

/// The contiguous elements of `s` that `l` addresses.
fn view<'a, T: CudaDType + DeviceRepr>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        None => candle_core::bail!("{what}: the fused CUDA kernels take contiguous tensors"),
    }
}

/// Rows per column-sum chunk (as `kernels/emu/harness.cpp`: at most ~512 chunks) and the number of
/// chunks.
fn chunking(rows: usize) -> (usize, usize) {
    let chunk = rows.div_ceil(512).max(32);
    (chunk, rows.div_ceil(chunk).max(1))
}

/// One warp per row, four rows per block.
fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(4).max(1) as u32, 1, 1),
        block_dim: (32, 4, 1),
        shared_mem_bytes: 0,
    }
}

/// A thread per column, a block row per chunk of rows.
fn per_column(width: usize, chunks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (width.div_ceil(256).max(1) as u32, chunks.max(1) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Grid-stride elementwise launch.
fn per_element(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 4096) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} {v} is too large")))
}

/// Sums the chunks of `partial` (chunks × width) into `out` (width values of T).
fn finish<T: Elem>(
    dev: &CudaDevice,
    partial: &CudaSlice<f32>,
    out: &mut CudaSlice<T>,
    at: usize,
    chunks: usize,
    width: usize,
) -> Result<()> {
    let f = function::<T>(dev, "colsum_finish")?;
    let stream = dev.cuda_stream();
    let mut dst = out.slice_mut(at..at + width);
    let (c, w) = (i32_of(chunks, "chunks")?, i32_of(width, "width")?);
    let mut b = stream.launch_builder(&f);
    b.arg(partial).arg(&mut dst).arg(&c).arg(&w);
    // SAFETY: partial holds chunks·width f32, dst width elements.
    unsafe { b.launch(per_column(width, 1)) }.w()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Column sums and LayerNorm

/// Σ over rows of an (rows, width) tensor → (width).
pub(crate) fn column_sum(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    fn go<T: Elem>(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let width = *l.shape().dims().last().unwrap_or(&1);
        let rows = l.shape().elem_count() / width.max(1);
        let x = view::<T>(s, l, "column sum input")?;
        let (chunk, chunks) = chunking(rows);
        let mut partial = dev.alloc_zeros::<f32>(chunks * width)?;
        let mut out = dev.alloc_zeros::<T>(width)?;
        let f = function::<T>(&dev, "colsum_partial")?;
        let (r, w, c) = (
            i32_of(rows, "rows")?,
            i32_of(width, "width")?,
            i32_of(chunk, "chunk")?,
        );
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&x).arg(&mut partial).arg(&r).arg(&w).arg(&c);
        // SAFETY: x holds rows·width elements, partial chunks·width.
        unsafe { b.launch(per_column(width, chunks)) }.w()?;
        finish::<T>(&dev, &partial, &mut out, 0, chunks, width)?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(width)))
    }
    by_dtype!(s.dtype(), go(s, l))
}

/// LayerNorm of the rows of x with weight w and bias b.
pub(crate) fn layer_norm_fwd(
    eps: f32,
    (sx, lx): (&CudaStorage, &Layout),
    (sw, lw): (&CudaStorage, &Layout),
    (sb, lb): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Elem>(
        eps: f32,
        (sx, lx): (&CudaStorage, &Layout),
        (sw, lw): (&CudaStorage, &Layout),
        (sb, lb): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let dev = sx.device().clone();
        let h = lw.shape().elem_count();
        let rows = lx.shape().elem_count() / h.max(1);
        let (x, w, b) = (
            view::<T>(sx, lx, "layer norm x")?,
            view::<T>(sw, lw, "layer norm weight")?,
            view::<T>(sb, lb, "layer norm bias")?,
        );
        let mut y = dev.alloc_zeros::<T>(rows * h)?;
        let f = function::<T>(&dev, "ln_fwd")?;
        let (r, hh) = (i32_of(rows, "rows")?, i32_of(h, "width")?);
        let stream = dev.cuda_stream();
        let mut l = stream.launch_builder(&f);
        l.arg(&x)
            .arg(&w)
            .arg(&b)
            .arg(&mut y)
            .arg(&r)
            .arg(&hh)
            .arg(&eps);
        // SAFETY: x and y hold rows·h elements, w and b h.
        unsafe { l.launch(per_row(rows)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), lx.shape().clone()))
    }
    by_dtype!(sx.dtype(), go(eps, (sx, lx), (sw, lw), (sb, lb)))
}

/// LayerNorm's gradients packed in one (rows + 2, h) tensor: dx, dweight, dbias.
pub(crate) fn layer_norm_bwd(
    eps: f32,
    (sx, lx): (&CudaStorage, &Layout),
    (sw, lw): (&CudaStorage, &Layout),
    (sg, lg): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Elem>(
        eps: f32,
        (sx, lx): (&CudaStorage, &Layout),
        (sw, lw): (&CudaStorage, &Layout),
        (sg, lg): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let dev = sx.device().clone();
        let h = lw.shape().elem_count();
        let rows = lx.shape().elem_count() / h.max(1);
        let (x, w, dy) = (
            view::<T>(sx, lx, "x")?,
            view::<T>(sw, lw, "weight")?,
            view::<T>(sg, lg, "grad")?,
        );
        let (chunk, chunks) = chunking(rows);
        let mut out = dev.alloc_zeros::<T>((rows + 2) * h)?;
        let mut stats = dev.alloc_zeros::<f32>(2 * rows.max(1))?;
        let mut partial = dev.alloc_zeros::<f32>(chunks * 2 * h)?;
        let (r, hh, c) = (
            i32_of(rows, "rows")?,
            i32_of(h, "width")?,
            i32_of(chunk, "chunk")?,
        );
        let stream = dev.cuda_stream();
        {
            let f = function::<T>(&dev, "ln_bwd_rows")?;
            let mut dx = out.slice_mut(0..rows * h);
            let mut l = stream.launch_builder(&f);
            l.arg(&x)
                .arg(&w)
                .arg(&dy)
                .arg(&mut dx)
                .arg(&mut stats)
                .arg(&r)
                .arg(&hh)
                .arg(&eps);
            // SAFETY: x, dy, dx hold rows·h elements, w h, stats 2·rows.
            unsafe { l.launch(per_row(rows)) }.w()?;
        }
        let f = function::<T>(&dev, "ln_bwd_cols")?;
        let mut l = stream.launch_builder(&f);
        l.arg(&x)
            .arg(&dy)
            .arg(&stats)
            .arg(&mut partial)
            .arg(&r)
            .arg(&hh)
            .arg(&c);
        // SAFETY: partial holds chunks·2h f32.
        unsafe { l.launch(per_column(h, chunks)) }.w()?;
        finish::<T>(&dev, &partial, &mut out, rows * h, chunks, 2 * h)?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((rows + 2, h)),
        ))
    }
    by_dtype!(sx.dtype(), go(eps, (sx, lx), (sw, lw), (sg, lg)))
}

// ---------------------------------------------------------------------------------------------------
// Bias + GELU, bias + dropout + residual, and their backward passes

/// [u; gelu(u)] for u = y + bias: a (2·rows, width) tensor.
pub(crate) fn bias_gelu(
    (sy, ly): (&CudaStorage, &Layout),
    (sb, lb): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Elem>(
        (sy, ly): (&CudaStorage, &Layout),
        (sb, lb): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let dev = sy.device().clone();
        let width = lb.shape().elem_count();
        let n = ly.shape().elem_count();
        let (y, bias) = (view::<T>(sy, ly, "y")?, view::<T>(sb, lb, "bias")?);
        let mut out = dev.alloc_zeros::<T>(2 * n)?;
        let f = function::<T>(&dev, "bias_gelu")?;
        let (nn, w) = (n as u64, i32_of(width, "width")?);
        let stream = dev.cuda_stream();
        let mut l = stream.launch_builder(&f);
        l.arg(&y).arg(&bias).arg(&mut out).arg(&nn).arg(&w);
        // SAFETY: y holds n elements, bias width, out 2n.
        unsafe { l.launch(per_element(n)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((2 * (n / width.max(1)), width)),
        ))
    }
    by_dtype!(sy.dtype(), go((sy, ly), (sb, lb)))
}

/// z = (y + bias)·mask + residual (no mask: no dropout).
pub(crate) fn bias_dropout_residual(
    (sy, ly): (&CudaStorage, &Layout),
    (sb, lb): (&CudaStorage, &Layout),
    (sr, lr): (&CudaStorage, &Layout),
    mask: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Elem>(
        (sy, ly): (&CudaStorage, &Layout),
        (sb, lb): (&CudaStorage, &Layout),
        (sr, lr): (&CudaStorage, &Layout),
        mask: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = sy.device().clone();
        let width = lb.shape().elem_count();
        let n = ly.shape().elem_count();
        let (y, bias, res) = (
            view::<T>(sy, ly, "y")?,
            view::<T>(sb, lb, "bias")?,
            view::<T>(sr, lr, "residual")?,
        );
        let m = mask
            .map(|(s, l)| view::<T>(s, l, "dropout mask"))
            .transpose()?;
        let mut z = dev.alloc_zeros::<T>(n)?;
        let f = function::<T>(&dev, "bias_dropout_residual")?;
        let (nn, w) = (n as u64, i32_of(width, "width")?);
        let null: u64 = 0;
        let stream = dev.cuda_stream();
        let mut l = stream.launch_builder(&f);
        l.arg(&y).arg(&bias);
        match &m {
            Some(m) => l.arg(m),
            None => l.arg(&null),
        };
        l.arg(&res).arg(&mut z).arg(&nn).arg(&w);
        // SAFETY: y, residual, mask and z hold n elements, bias width; a null mask is never read.
        unsafe { l.launch(per_element(n)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(z, dev), ly.shape().clone()))
    }
    by_dtype!(sy.dtype(), go((sy, ly), (sb, lb), (sr, lr), mask))
}

/// Which column pass of [`columns_with`].
#[derive(Clone, Copy)]
pub(crate) enum ColumnPass {
    /// du = dg·gelu'(u): inputs (u, dg).
    GeluBackward,
    /// dy = dz·mask: inputs (dz, mask or none).
    DropoutBackward,
}

/// An elementwise result with its column sums, packed as (rows + 1, width).
pub(crate) fn columns_with(
    pass: ColumnPass,
    (sa, la): (&CudaStorage, &Layout),
    b: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Elem>(
        pass: ColumnPass,
        (sa, la): (&CudaStorage, &Layout),
        b: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = sa.device().clone();
        let width = *la.shape().dims().last().unwrap_or(&1);
        let rows = la.shape().elem_count() / width.max(1);
        let a = view::<T>(sa, la, "input")?;
        let bv = b
            .map(|(s, l)| view::<T>(s, l, "second input"))
            .transpose()?;
        let (chunk, chunks) = chunking(rows);
        let mut out = dev.alloc_zeros::<T>((rows + 1) * width)?;
        let mut partial = dev.alloc_zeros::<f32>(chunks * width)?;
        let name = match pass {
            ColumnPass::GeluBackward => "gelu_bwd_cols",
            ColumnPass::DropoutBackward => "dropout_bwd_cols",
        };
        if matches!(pass, ColumnPass::GeluBackward) && bv.is_none() {
            candle_core::bail!("the GELU backward pass needs the gradient");
        }
        let f = function::<T>(&dev, name)?;
        let (r, w, c) = (
            i32_of(rows, "rows")?,
            i32_of(width, "width")?,
            i32_of(chunk, "chunk")?,
        );
        let null: u64 = 0;
        let stream = dev.cuda_stream();
        {
            let mut dst = out.slice_mut(0..rows * width);
            let mut l = stream.launch_builder(&f);
            l.arg(&a);
            match &bv {
                Some(bv) => l.arg(bv),
                None => l.arg(&null),
            };
            l.arg(&mut dst).arg(&mut partial).arg(&r).arg(&w).arg(&c);
            // SAFETY: a, b and dst hold rows·width elements, partial chunks·width; a null mask is never
            // read.
            unsafe { l.launch(per_column(width, chunks)) }.w()?;
        }
        finish::<T>(&dev, &partial, &mut out, rows * width, chunks, width)?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((rows + 1, width)),
        ))
    }
    by_dtype!(sa.dtype(), go(pass, (sa, la), b))
}

// ---------------------------------------------------------------------------------------------------
// Attention

/// The kernels' view of one attention problem (layout of `AttShape` in train.cu).
#[repr(C)]
#[derive(Clone, Copy)]
struct AttShape {
    heads: i32,
    head_dim: i32,
    scale: f32,
    site: u64,
    threshold: u32,
    keep_scale: f32,
}

// SAFETY: a plain #[repr(C)] struct of numbers, laid out as the kernels' struct.
unsafe impl DeviceRepr for AttShape {}

/// Rows (as cu_seqlens), per-row offsets of the probabilities, head shape and dropout of one call.
pub(crate) struct Attention<'a> {
    pub starts: &'a [usize],
    pub heads: usize,
    pub head_dim: usize,
    /// Dropout on the probabilities: the site's code and p (the sentences' keys come with the call).
    pub dropout: Option<(u64, f64)>,
}

/// The sentences' keys (`[B]` i64) a dropout kernel reads, or none without dropout.
pub(crate) type Keys<'a> = Option<(&'a CudaStorage, &'a Layout)>;

/// A null pointer where a kernel reads no keys.
const NO_KEYS: u64 = 0;

const TILE: usize = 32;
const WARPS: u32 = 4;

impl Attention<'_> {
    fn offsets(&self) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.starts.len());
        out.push(0i64);
        for w in self.starts.windows(2) {
            let l = (w[1] - w[0]) as i64;
            let last = *out.last().unwrap_or(&0);
            out.push(last + self.heads as i64 * l * l);
        }
        out
    }

    fn shape(&self) -> Result<AttShape> {
        let (site, threshold, keep_scale) = match self.dropout {
            Some((site, p)) if p > 0.0 => {
                (site, crate::dropout::threshold(p), (1.0 / (1.0 - p)) as f32)
            }
            _ => (0, 65536, 1.0),
        };
        Ok(AttShape {
            heads: i32_of(self.heads, "heads")?,
            head_dim: i32_of(self.head_dim, "head size")?,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            site,
            threshold,
            keep_scale,
        })
    }

    fn launch(&self, shared_floats: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (((self.starts.len() - 1) * self.heads) as u32, 1, 1),
            block_dim: (32, WARPS, 1),
            shared_mem_bytes: (shared_floats * 4) as u32,
        }
    }

    fn tokens(&self) -> usize {
        *self.starts.last().unwrap_or(&0)
    }

    /// Uploads the row starts (i32) and probability offsets (i64).
    fn tables(&self, dev: &CudaDevice) -> Result<(CudaSlice<i32>, CudaSlice<i64>)> {
        let starts: Vec<i32> = self
            .starts
            .iter()
            .map(|&s| i32_of(s, "token index"))
            .collect::<Result<_>>()?;
        Ok((dev.clone_htod(&starts)?, dev.clone_htod(&self.offsets())?))
    }

    /// [context (N·H); probabilities (Σ heads·L²)] in f32, from qkv [N, 3H].
    pub(crate) fn forward(
        &self,
        s: &CudaStorage,
        l: &Layout,
        keys: Keys,
    ) -> Result<(CudaStorage, Shape)> {
        fn go<T: Elem>(
            a: &Attention,
            s: &CudaStorage,
            l: &Layout,
            keys: Keys,
        ) -> Result<(CudaStorage, Shape)> {
            let dev = s.device().clone();
            let qkv = view::<T>(s, l, "qkv")?;
            let keys = keys
                .map(|(s, l)| view::<i64>(s, l, "sentence keys"))
                .transpose()?;
            let (starts, poff) = a.tables(&dev)?;
            let n_ctx = a.tokens() * a.heads * a.head_dim;
            let n_probs = *a.offsets().last().unwrap_or(&0) as usize;
            let mut out = dev.alloc_zeros::<f32>(n_ctx + n_probs)?;
            let shape = a.shape()?;
            let f = function::<T>(&dev, "attn_fwd")?;
            let stream = dev.cuda_stream();
            {
                let (mut ctx, mut probs) = out.split_at_mut(n_ctx);
                let mut b = stream.launch_builder(&f);
                b.arg(&qkv).arg(&starts);
                match &keys {
                    Some(k) => b.arg(k),
                    None => b.arg(&NO_KEYS),
                };
                b.arg(&poff).arg(&mut probs).arg(&mut ctx).arg(&shape);
                let shared = TILE * (a.head_dim + 1) + WARPS as usize * a.head_dim;
                // SAFETY: the tables describe qkv's rows; ctx holds N·H f32, probs Σ heads·L².
                unsafe { b.launch(a.launch(shared)) }.w()?;
            }
            Ok((
                CudaStorage::wrap_cuda_slice(out, dev),
                Shape::from(n_ctx + n_probs),
            ))
        }
        by_dtype!(s.dtype(), go(self, s, l, keys))
    }

    /// dqkv [N, 3H] in f32 from qkv, the context's gradient and the kept probabilities.
    pub(crate) fn backward(
        &self,
        (sq, lq): (&CudaStorage, &Layout),
        (sg, lg): (&CudaStorage, &Layout),
        (sp, lp): (&CudaStorage, &Layout),
        keys: Keys,
    ) -> Result<(CudaStorage, Shape)> {
        fn go<T: Elem>(
            a: &Attention,
            (sq, lq): (&CudaStorage, &Layout),
            (sg, lg): (&CudaStorage, &Layout),
            (sp, lp): (&CudaStorage, &Layout),
            keys: Keys,
        ) -> Result<(CudaStorage, Shape)> {
            let dev = sq.device().clone();
            let keys = keys
                .map(|(s, l)| view::<i64>(s, l, "sentence keys"))
                .transpose()?;
            let qkv = view::<T>(sq, lq, "qkv")?;
            let dctx = view::<T>(sg, lg, "context gradient")?;
            let probs = view::<f32>(sp, lp, "attention probabilities")?;
            let (starts, poff) = a.tables(&dev)?;
            let n = a.tokens();
            let h = a.heads * a.head_dim;
            let mut dz = dev.alloc_zeros::<f32>(probs.len())?;
            let mut dqkv = dev.alloc_zeros::<f32>(n * 3 * h)?;
            let shape = a.shape()?;
            let stream = dev.cuda_stream();
            let one_tile = TILE * (a.head_dim + 1) + WARPS as usize * a.head_dim;
            let two_tiles = 2 * TILE * (a.head_dim + 1);
            let f = function::<T>(&dev, "attn_bwd_scores")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&qkv).arg(&dctx).arg(&starts);
            match &keys {
                Some(k) => b.arg(k),
                None => b.arg(&NO_KEYS),
            };
            b.arg(&poff).arg(&probs).arg(&mut dz).arg(&shape);
            // SAFETY (all three launches): the tables describe the rows of qkv and dctx; probs and dz
            // hold Σ heads·L² f32, dqkv N·3H.
            unsafe { b.launch(a.launch(one_tile)) }.w()?;
            let f = function::<T>(&dev, "attn_bwd_dq")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&qkv)
                .arg(&starts)
                .arg(&poff)
                .arg(&dz)
                .arg(&mut dqkv)
                .arg(&shape);
            unsafe { b.launch(a.launch(two_tiles)) }.w()?;
            let f = function::<T>(&dev, "attn_bwd_dkv")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&qkv).arg(&dctx).arg(&starts);
            match &keys {
                Some(k) => b.arg(k),
                None => b.arg(&NO_KEYS),
            };
            b.arg(&poff).arg(&probs).arg(&dz).arg(&mut dqkv).arg(&shape);
            unsafe { b.launch(a.launch(two_tiles)) }.w()?;
            Ok((
                CudaStorage::wrap_cuda_slice(dqkv, dev),
                Shape::from((n, 3 * h)),
            ))
        }
        by_dtype!(sq.dtype(), go(self, (sq, lq), (sg, lg), (sp, lp), keys))
    }
}

// ---------------------------------------------------------------------------------------------------
// Dropout masks keyed by the sentence (kernels/dropout.cuh)

type View<'a> = (&'a CudaStorage, &'a Layout);

/// (threshold, 1/(1−p)) of dropout `p`.
fn keep_params(p: f64) -> (u32, f32) {
    (crate::dropout::threshold(p), (1.0 / (1.0 - p)) as f32)
}

/// A scaled keep-mask shaped and typed as `like` (`[count, width]`): row e is position `pos[e]` of
/// sentence `rows[e]`, whose key is `keys[rows[e]]`.
pub(crate) fn dropout_mask(
    like: View,
    keys: View,
    rows: View,
    pos: View,
    site: u64,
    p: f64,
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Elem>(
        (sl, ll): View,
        keys: View,
        rows: View,
        pos: View,
        site: u64,
        p: f64,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = sl.device().clone();
        let shape = ll.shape().clone();
        let (count, width) = shape.dims2()?;
        let keys = view::<i64>(keys.0, keys.1, "sentence keys")?;
        let rows = view::<u32>(rows.0, rows.1, "mask rows")?;
        let pos = view::<u32>(pos.0, pos.1, "mask positions")?;
        let mut out = dev.alloc_zeros::<T>(count * width)?;
        let f = function::<T>(&dev, "dropout_mask")?;
        let (threshold, scale) = keep_params(p);
        let (n, w) = (count as u64, i32_of(width, "width")?);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&mut out)
            .arg(&keys)
            .arg(&rows)
            .arg(&pos)
            .arg(&n)
            .arg(&w)
            .arg(&site)
            .arg(&threshold)
            .arg(&scale);
        // SAFETY: out holds count·width elements; rows and pos count entries indexing keys.
        unsafe { b.launch(per_element(count * width)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
    }
    by_dtype!(like.0.dtype(), go(like, keys, rows, pos, site, p))
}

/// A scaled keep-mask of attention probabilities gathered into a padded `[B, heads, T, T]` block
/// (`like`'s shape and dtype); `starts` `[B+1]` i32.
pub(crate) fn padded_attention_mask(
    like: View,
    keys: View,
    starts: View,
    site: u64,
    p: f64,
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Elem>(
        (sl, ll): View,
        keys: View,
        starts: View,
        site: u64,
        p: f64,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = sl.device().clone();
        let shape = ll.shape().clone();
        let (b, heads, t, _) = shape.dims4()?;
        let keys = view::<i64>(keys.0, keys.1, "sentence keys")?;
        let starts = view::<i32>(starts.0, starts.1, "row starts")?;
        let mut out = dev.alloc_zeros::<T>(shape.elem_count())?;
        let f = function::<T>(&dev, "attn_dropout_mask_padded")?;
        let (threshold, scale) = keep_params(p);
        let (hh, tt) = (i32_of(heads, "heads")?, i32_of(t, "longest row")?);
        let stream = dev.cuda_stream();
        let mut l = stream.launch_builder(&f);
        l.arg(&mut out)
            .arg(&keys)
            .arg(&starts)
            .arg(&hh)
            .arg(&tt)
            .arg(&site)
            .arg(&threshold)
            .arg(&scale);
        let cfg = LaunchConfig {
            grid_dim: ((b * heads).max(1) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: out holds B·heads·T·T elements; starts B+1 entries, keys B.
        unsafe { l.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
    }
    by_dtype!(like.0.dtype(), go(like, keys, starts, site, p))
}

// ---------------------------------------------------------------------------------------------------
// Cross-entropy

/// d(loss)/d(logits) (the logits' storage type); each row's loss written into `loss` (`[M]` f32), not
/// read back.
pub(crate) fn cross_entropy(
    (sz, lz): (&CudaStorage, &Layout),
    (sl, ll): (&CudaStorage, &Layout),
    (so, lo): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Elem>(
        (sz, lz): (&CudaStorage, &Layout),
        (sl, ll): (&CudaStorage, &Layout),
        (so, lo): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let dev = sz.device().clone();
        let (m, c) = lz.shape().dims2()?;
        let logits = view::<T>(sz, lz, "logits")?;
        let labels = match ll.contiguous_offsets() {
            Some((a, b)) => sl.as_cuda_slice::<u32>()?.slice(a..b),
            None => candle_core::bail!("labels: expected a contiguous u32 tensor"),
        };
        let loss = match lo.contiguous_offsets() {
            Some((a, b)) if b - a == m => so.as_cuda_slice::<f32>()?.slice(a..b),
            _ => candle_core::bail!("cross-entropy: expected a contiguous f32 loss buffer of {m}"),
        };
        let mut grad = dev.alloc_zeros::<T>(m * c)?;
        let f = function::<T>(&dev, "cross_entropy")?;
        let (mm, cc) = (i32_of(m, "rows")?, i32_of(c, "classes")?);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&logits)
            .arg(&labels)
            .arg(&loss)
            .arg(&mut grad)
            .arg(&mm)
            .arg(&cc);
        // SAFETY: logits and grad hold m·c elements, labels and loss m; the loss buffer is the op's
        // own (written through: no one else reads it before the launch).
        unsafe { b.launch(per_row(m)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(grad, dev), Shape::from((m, c))))
    }
    by_dtype!(sz.dtype(), go((sz, lz), (sl, ll), (so, lo)))
}
