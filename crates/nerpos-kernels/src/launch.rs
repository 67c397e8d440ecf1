//! Kernel launches described once and run on a GPU or on the CPU emulator.
//!
//! Each op's GPU code builds [`Launch`]es — the kernel's name, grid and block shapes, dynamic shared
//! memory and arguments — and hands them to an [`Exec`]: the CUDA stream of the op's tensors
//! (`crate::cuda`), or, in the tests, the CPU emulator (`crate::emu`), which checks the arguments
//! against the kernel's parameter list. So the launch code that runs on a GPU is the code the tests
//! run, and every launch is checked against the hardware limits here, before it goes out.

use bytemuck::{Pod, Zeroable};

use crate::error::{KernelError, Result};

include!(concat!(env!("OUT_DIR"), "/layout.rs"));

/// Threads per block (every CUDA GPU since compute capability 2.0).
pub const MAX_BLOCK_THREADS: u32 = 1024;
/// Dynamic shared memory per block without the opt-in attribute.
pub const MAX_SHARED_BYTES: u32 = 48 * 1024;
/// Blocks per grid dimension (x, y, z).
pub const MAX_GRID: [u32; 3] = [i32::MAX as u32, 65_535, 65_535];

/// A device address: a GPU pointer, or a host pointer on the emulator; 0 is null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ptr(pub u64);

impl Ptr {
    pub const NULL: Ptr = Ptr(0);

    /// `bytes` further on.
    pub fn offset(self, bytes: usize) -> Ptr {
        Ptr(self.0 + bytes as u64)
    }
}

/// The attention kernels' parameters, passed by value; its layout is checked against the kernels'
/// struct (`kernels/attention.cu`) through the constants build.rs writes for both.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct AttShape {
    /// Dropout site (`Site::code`), used when `threshold` < 65536.
    pub site: u64,
    pub heads: i32,
    pub head_dim: i32,
    pub scale: f32,
    /// Keep-threshold of the 16-bit draws; 65536 = no dropout.
    pub threshold: u32,
    /// 1/(1−p).
    pub keep_scale: f32,
    pub pad: u32,
}

const _: () = assert!(std::mem::size_of::<AttShape>() == ATT_SHAPE_SIZE);
const _: () = assert!(std::mem::offset_of!(AttShape, heads) == ATT_SHAPE_HEADS_OFFSET);
const _: () = assert!(std::mem::offset_of!(AttShape, keep_scale) == ATT_SHAPE_KEEP_SCALE_OFFSET);

/// One kernel argument, as the kernel's parameter of the same type takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    Ptr(Ptr),
    I32(i32),
    U32(u32),
    U64(u64),
    F32(f32),
    Att(AttShape),
}

impl Arg {
    /// The argument's bytes, as the kernel reads its parameter.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Arg::Ptr(p) => p.0.to_ne_bytes().to_vec(),
            Arg::I32(v) => v.to_ne_bytes().to_vec(),
            Arg::U32(v) => v.to_ne_bytes().to_vec(),
            Arg::U64(v) => v.to_ne_bytes().to_vec(),
            Arg::F32(v) => v.to_ne_bytes().to_vec(),
            Arg::Att(s) => bytemuck::bytes_of(s).to_vec(),
        }
    }
}

macro_rules! arg_from {
    ($($t:ty => $v:ident),*) => {
        $(impl From<$t> for Arg {
            fn from(v: $t) -> Arg {
                Arg::$v(v)
            }
        })*
    };
}
arg_from!(Ptr => Ptr, i32 => I32, u32 => U32, u64 => U64, f32 => F32, AttShape => Att);

/// A kernel launch: what `cuLaunchKernel` takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The exported name (`nerpos_ln_fwd_f32`).
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared: u32,
    pub args: Vec<Arg>,
}

impl Launch {
    /// A launch of `kernel` on a grid of `grid` blocks of `block` threads (x, y).
    pub fn new(kernel: impl Into<String>, grid: (u32, u32), block: (u32, u32)) -> Launch {
        Launch {
            kernel: kernel.into(),
            grid: [grid.0, grid.1, 1],
            block: [block.0, block.1, 1],
            shared: 0,
            args: Vec::new(),
        }
    }

    pub fn shared(mut self, bytes: usize) -> Launch {
        self.shared = u32::try_from(bytes).unwrap_or(u32::MAX);
        self
    }

    pub fn arg(mut self, a: impl Into<Arg>) -> Launch {
        self.args.push(a.into());
        self
    }

    /// Whether the GPU can run it at all: block size, shared memory and grid within the limits.
    pub fn check(&self) -> Result<()> {
        let threads: u64 = self.block.iter().map(|&b| u64::from(b)).product();
        let bad = |what: String| {
            Err(KernelError::Launch {
                kernel: self.kernel.clone(),
                msg: what,
            })
        };
        if threads == 0 || threads > u64::from(MAX_BLOCK_THREADS) {
            return bad(format!(
                "{threads} threads per block (1 to {MAX_BLOCK_THREADS})"
            ));
        }
        if self.shared > MAX_SHARED_BYTES {
            return bad(format!(
                "{} bytes of shared memory (at most {MAX_SHARED_BYTES})",
                self.shared
            ));
        }
        for (d, (&g, &max)) in self.grid.iter().zip(&MAX_GRID).enumerate() {
            if g == 0 || g > max {
                return bad(format!("grid dimension {d} of {g} blocks (1 to {max})"));
            }
        }
        Ok(())
    }
}

/// Where launches run: a GPU stream, or the CPU emulator.
pub trait Exec {
    /// `bytes` of scratch memory for the launches (uninitialised; freed with the executor).
    fn scratch(&mut self, bytes: usize) -> Result<Ptr>;
    /// A copy of `data` for the launches to read (a host → device copy on a GPU; freed with the
    /// executor): a small table (addresses, chunks).
    fn upload(&mut self, data: &[u8]) -> Result<Ptr>;
    /// Queues `launch`, checked first ([`Launch::check`]).
    fn launch(&mut self, launch: Launch) -> Result<()>;
}

/// An executor that runs nothing: it checks each launch against the limits and records it — what a
/// planner decides, countable without a GPU.
#[derive(Debug, Default)]
pub struct Counter {
    /// The kernels launched, in order.
    pub launched: Vec<String>,
    next: u64,
}

impl Exec for Counter {
    fn scratch(&mut self, bytes: usize) -> Result<Ptr> {
        // Distinct fake addresses (never dereferenced).
        self.next += bytes.max(1) as u64;
        Ok(Ptr(self.next))
    }

    fn upload(&mut self, data: &[u8]) -> Result<Ptr> {
        self.scratch(data.len())
    }

    fn launch(&mut self, launch: Launch) -> Result<()> {
        launch.check()?;
        self.launched.push(launch.kernel);
        Ok(())
    }
}

/// The element type of a kernel's tensors: the suffix of its exported name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    Bf16,
}

impl Elem {
    /// `nerpos_{name}_{f32|bf16}`.
    pub fn kernel(self, name: &str) -> String {
        let suffix = match self {
            Elem::F32 => "f32",
            Elem::Bf16 => "bf16",
        };
        format!("nerpos_{name}_{suffix}")
    }

    pub fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::Bf16 => 2,
        }
    }

    pub fn of(dtype: candle_core::DType) -> Result<Elem> {
        match dtype {
            candle_core::DType::F32 => Ok(Elem::F32),
            candle_core::DType::BF16 => Ok(Elem::Bf16),
            other => Err(KernelError::Internal(format!(
                "the fused CUDA kernels take f32 or bf16, not {other:?}"
            ))),
        }
    }
}

/// A number that must fit a kernel's `int` parameter.
pub fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| KernelError::Internal(format!("{what} {v} is too large")))
}

/// Rows per column-sum chunk (at most ~512 chunks, at least 32 rows each) and the number of chunks.
pub fn chunking(rows: usize) -> (usize, usize) {
    let chunk = rows.div_ceil(512).max(32);
    (chunk, rows.div_ceil(chunk).max(1))
}

/// One warp per row, four rows per block: (grid, block).
pub fn per_row(rows: usize) -> ((u32, u32), (u32, u32)) {
    ((rows.div_ceil(4).max(1) as u32, 1), (32, 4))
}

/// A thread per column, a block row per chunk of rows.
pub fn per_column(width: usize, chunks: usize) -> ((u32, u32), (u32, u32)) {
    (
        (width.div_ceil(256).max(1) as u32, chunks.max(1) as u32),
        (256, 1),
    )
}

/// Grid-stride elementwise launch over `n` elements.
pub fn per_element(n: usize) -> ((u32, u32), (u32, u32)) {
    ((n.div_ceil(256).clamp(1, 4096) as u32, 1), (256, 1))
}

/// The finishing launch of a column sum: `out[j]` = Σ of `chunks` rows of `partial` (chunks × width),
/// written at `out`.
pub fn colsum_finish(
    s: Elem,
    partial: Ptr,
    out: Ptr,
    chunks: usize,
    width: usize,
) -> Result<Launch> {
    let grid = (width.div_ceil(32).max(1) as u32, 1);
    Ok(
        Launch::new(s.kernel("colsum_finish"), grid, (32, FINISH_LANES as u32))
            .shared(32 * FINISH_LANES * 4)
            .arg(partial)
            .arg(out)
            .arg(int(chunks, "chunks")?)
            .arg(int(width, "width")?),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launches_beyond_the_limits_are_refused_naming_the_kernel() {
        let ok = Launch::new("k", (10, 1), (32, 4)).shared(1024);
        assert!(ok.check().is_ok());
        for bad in [
            Launch::new("k", (10, 1), (32, 64)),
            Launch::new("k", (0, 1), (32, 4)),
            Launch::new("k", (1, 70_000), (32, 4)),
            Launch::new("k", (1, 1), (32, 4)).shared(49 * 1024),
        ] {
            let e = bad.check().unwrap_err().to_string();
            assert!(e.contains("kernel k"), "{e}");
        }
    }

    #[test]
    fn arguments_have_the_kernels_sizes() {
        assert_eq!(Arg::from(Ptr(7)).bytes().len(), 8);
        assert_eq!(Arg::from(3i32).bytes().len(), 4);
        assert_eq!(Arg::from(AttShape::zeroed()).bytes().len(), ATT_SHAPE_SIZE);
    }
}
