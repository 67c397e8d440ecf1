//! The CPU emulator of the CUDA kernels, for the tests: `kernels/all.cu` built against
//! `kernels/emu/cuda_emu.h` (a thread per CUDA thread, barriers for `__syncthreads`, `__syncwarp` and
//! warp shuffles, blocks one after another) into a shared library, loaded once per test process, and
//! an [`Exec`] that runs the ops' own launches on host memory — so each op's test runs the launch code
//! a GPU runs. Needs a C++20 compiler (`CXX`, else `g++`); without one the tests are reported skipped.

use std::ffi::{CString, c_char, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{KernelError, Result};
use crate::launch::{Elem, Exec, Launch, Ptr};

type LaunchFn = unsafe extern "C" fn(
    *const c_char,
    *const u32,
    *const u32,
    u32,
    *mut *mut c_void,
    *const usize,
    usize,
    *mut c_char,
    usize,
) -> i32;

/// The loaded emulator library's launch entry.
pub(crate) struct Emu {
    launch: LaunchFn,
}

/// The sanitizer the emulator is instrumented with, from `NERPOS_EMU_SANITIZE` (`address` or
/// `thread`; `tests/sanitize.sh` sets it and preloads the runtime).
fn sanitizer_flags() -> Vec<String> {
    match std::env::var("NERPOS_EMU_SANITIZE") {
        Ok(kind) if kind == "address" || kind == "thread" => vec![
            format!("-fsanitize={kind}"),
            "-g".into(),
            "-fno-omit-frame-pointer".into(),
        ],
        Ok(kind) if !kind.is_empty() => {
            panic!("NERPOS_EMU_SANITIZE={kind}: expected address or thread")
        }
        _ => Vec::new(),
    }
}

/// Builds the emulator library with `cxx` into `dir`.
fn build(cxx: &str, dir: &Path) -> PathBuf {
    let lib = dir.join("libnerpos_emu.so");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(cxx)
        .args(sanitizer_flags())
        .args([
            "-std=c++20",
            "-O2",
            "-pthread",
            "-shared",
            "-fPIC",
            "-Wall",
            "-I",
        ])
        .arg(env!("OUT_DIR"))
        .arg("-o")
        .arg(&lib)
        .arg(root.join("kernels/emu/lib.cpp"))
        .output()
        .expect("runs the C++ compiler");
    assert!(
        out.status.success(),
        "the CUDA kernels do not build for the emulator:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

/// The emulator, built once per test process; `None` (recorded as a skip of `test`) without a C++
/// compiler.
pub(crate) fn emulator(test: &str) -> Option<&'static Emu> {
    static EMU: OnceLock<Option<Emu>> = OnceLock::new();
    let emu = EMU.get_or_init(|| {
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
        if Command::new(&cxx).arg("--version").output().is_err() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("nerpos-cuda-emu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let lib = build(&cxx, &dir);
        let path = CString::new(lib.to_string_lossy().as_bytes()).expect("a path without NUL");
        // SAFETY: loading a library we just built; its symbol has the signature of `LaunchFn`.
        unsafe {
            let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW);
            assert!(!handle.is_null(), "dlopen {}", lib.display());
            let sym = libc::dlsym(handle, c"nerpos_emu_launch".as_ptr());
            assert!(!sym.is_null(), "nerpos_emu_launch not exported");
            Some(Emu {
                launch: std::mem::transmute::<*mut c_void, LaunchFn>(sym),
            })
        }
    });
    if emu.is_none() {
        nerpos_testdata::skip(
            test,
            "no C++20 compiler (CXX or g++) to build the CUDA emulator",
        );
    }
    emu.as_ref()
}

/// Runs launches on the emulator, on host memory.
pub(crate) struct EmuExec {
    emu: &'static Emu,
    scratch: Vec<Vec<u64>>,
}

impl EmuExec {
    pub(crate) fn new(emu: &'static Emu) -> EmuExec {
        EmuExec {
            emu,
            scratch: Vec::new(),
        }
    }
}

impl Exec for EmuExec {
    fn scratch(&mut self, bytes: usize) -> Result<Ptr> {
        // u64 words: aligned for any element type.
        let buf = vec![0u64; bytes.div_ceil(8).max(1)];
        let p = Ptr(buf.as_ptr() as u64);
        self.scratch.push(buf);
        Ok(p)
    }

    fn upload(&mut self, data: &[u8]) -> Result<Ptr> {
        let p = self.scratch(data.len())?;
        let buf = self.scratch.last_mut().expect("just pushed");
        bytemuck::cast_slice_mut::<u64, u8>(buf)[..data.len()].copy_from_slice(data);
        Ok(p)
    }

    fn launch(&mut self, l: Launch) -> Result<()> {
        l.check()?;
        let mut values: Vec<Vec<u8>> = l.args.iter().map(|a| a.bytes()).collect();
        let sizes: Vec<usize> = values.iter().map(Vec::len).collect();
        let mut params: Vec<*mut c_void> =
            values.iter_mut().map(|v| v.as_mut_ptr().cast()).collect();
        let name = CString::new(l.kernel.clone())
            .map_err(|_| KernelError::Internal("a kernel name with NUL".into()))?;
        let mut err = vec![0 as c_char; 512];
        // SAFETY: every pointer is valid for the call; the library checks the arguments' count and
        // sizes against the kernel's parameters before it runs it.
        let rc = unsafe {
            (self.emu.launch)(
                name.as_ptr(),
                l.grid.as_ptr(),
                l.block.as_ptr(),
                l.shared,
                params.as_mut_ptr(),
                sizes.as_ptr(),
                sizes.len(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            // SAFETY: the library wrote a NUL-terminated message into `err`.
            let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
            return Err(KernelError::Launch {
                kernel: l.kernel,
                msg: msg.to_string_lossy().into_owned(),
            });
        }
        Ok(())
    }
}

/// The address of a host slice the emulated kernels read.
pub(crate) fn ptr<T>(v: &[T]) -> Ptr {
    Ptr(v.as_ptr() as u64)
}

/// The address of a host slice the emulated kernels write.
pub(crate) fn ptr_mut<T>(v: &mut [T]) -> Ptr {
    Ptr(v.as_mut_ptr() as u64)
}

/// A host buffer in a kernel's storage type.
pub(crate) enum HostBuf {
    F32(Vec<f32>),
    Bf16(Vec<half::bf16>),
}

impl HostBuf {
    /// `v` stored as `elem` (rounded to bf16 for bf16).
    pub(crate) fn new(elem: Elem, v: &[f32]) -> HostBuf {
        match elem {
            Elem::F32 => HostBuf::F32(v.to_vec()),
            Elem::Bf16 => HostBuf::Bf16(v.iter().map(|&x| half::bf16::from_f32(x)).collect()),
        }
    }

    pub(crate) fn zeros(elem: Elem, n: usize) -> HostBuf {
        HostBuf::new(elem, &vec![0.0; n])
    }

    pub(crate) fn ptr(&self) -> Ptr {
        match self {
            HostBuf::F32(v) => ptr(v),
            HostBuf::Bf16(v) => ptr(v),
        }
    }

    pub(crate) fn ptr_mut(&mut self) -> Ptr {
        match self {
            HostBuf::F32(v) => ptr_mut(v),
            HostBuf::Bf16(v) => ptr_mut(v),
        }
    }

    /// The values as f32.
    pub(crate) fn values(&self) -> Vec<f32> {
        match self {
            HostBuf::F32(v) => v.clone(),
            HostBuf::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }
}

/// `v` as a kernel of storage `elem` sees it (rounded to bf16 for bf16).
pub(crate) fn seen(elem: Elem, v: &[f32]) -> Vec<f32> {
    HostBuf::new(elem, v).values()
}

/// The tolerance of a comparison: `f32_tol` in f32, `bf16_tol` in bf16.
pub(crate) fn tol(elem: Elem, f32_tol: f32, bf16_tol: f32) -> f32 {
    match elem {
        Elem::F32 => f32_tol,
        Elem::Bf16 => bf16_tol,
    }
}

/// Largest |a − b| / (1 + |b|).
pub(crate) fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

/// Asserts `gpu` is within `tol` of `reference` (relative, as [`rel_err`]).
pub(crate) fn close(what: &str, gpu: &[f32], reference: &[f32], tol: f32) {
    let e = rel_err(gpu, reference);
    assert!(e <= tol, "{what}: max relative error {e:.2e} > {tol:.0e}");
}

/// Asserts `gpu`, stored as `elem`, is within `tol` of `reference` (relative, as [`rel_err`]) beyond
/// the rounding of the store itself: in bf16 half a step, at most |y|·2⁻⁸ — so that an output the
/// kernel sums in f32 and stores in bf16 is held to the f32 sum's tolerance.
pub(crate) fn close_stored(what: &str, elem: Elem, gpu: &[f32], reference: &[f32], tol: f32) {
    assert_eq!(gpu.len(), reference.len(), "{what}: lengths");
    let half_step = match elem {
        Elem::F32 => 0.0,
        Elem::Bf16 => 2f32.powi(-8),
    };
    let e = gpu
        .iter()
        .zip(reference)
        .map(|(x, y)| ((x - y).abs() - half_step * y.abs()).max(0.0) / (1.0 + y.abs()))
        .fold(0.0, f32::max);
    assert!(
        e <= tol,
        "{what}: max relative error {e:.2e} beyond the store's rounding > {tol:.0e}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::Launch;

    /// A launch whose arguments do not fit the kernel's parameters is refused with the reason, as
    /// `cuLaunchKernel` would misread them on a GPU.
    #[test]
    fn arguments_are_checked_against_the_kernels_parameters() {
        let Some(emu) =
            emulator("emu::tests::arguments_are_checked_against_the_kernels_parameters")
        else {
            return;
        };
        let mut e = EmuExec::new(emu);
        let out = vec![0f32; 4];
        let l = Launch::new("nerpos_colsum_finish_f32", (1, 1), (256, 1))
            .arg(ptr(&out))
            .arg(ptr(&out))
            .arg(1i32);
        let err = e.launch(l).unwrap_err().to_string();
        assert!(err.contains("3 arguments for 4 parameters"), "{err}");
        let l = Launch::new("nerpos_colsum_finish_f32", (1, 1), (256, 1))
            .arg(ptr(&out))
            .arg(ptr(&out))
            .arg(1u64)
            .arg(4i32);
        let err = e.launch(l).unwrap_err().to_string();
        assert!(err.contains("argument 2 has 8 bytes"), "{err}");
        let err = e
            .launch(Launch::new("nerpos_missing_f32", (1, 1), (32, 1)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no kernel named"), "{err}");
    }
}
