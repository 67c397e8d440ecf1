#!/usr/bin/env bash
# Builds nerpos's CUDA binaries (candle's CUDA backend + NCCL through cudarc) on any x86-64 Linux machine,
# with or without CUDA installed, with or without a GPU.
#
#   launch/build-cuda.sh [--check] [--cap 90] [--out DIR]
#
#   --check     only `cargo clippy --features cuda` (what CI runs: proves the GPU code compiles)
#   --cap N     GPU compute capability to build kernels for (default 90 = H100/H200; 80 = A100, 89 = L4/L40)
#   --out DIR   where the binaries and the run-time wrapper go (default target/cuda/bin)
#
# CUDA toolchain: the system's when `nvcc` is on PATH or CUDA_HOME holds one; otherwise a CUDA 13.0
# toolchain from pinned PyPI wheels, installed once into NERPOS_CUDA_PREFIX (default .cuda13/, ignored).
# The wheels carry no driver library, so linking uses a stub libcuda.so generated from the driver symbols
# cudarc declares; it sits on the link path only, and the real driver is used at run time.
# Cargo's target directory: CARGO_TARGET_DIR, default target/cuda (kept apart from the CPU build).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

check=0
cap=${CUDA_COMPUTE_CAP:-90}
out=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --check) check=1 ;;
    --cap) cap=$2; shift ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
export CUDA_COMPUTE_CAP=$cap
# candle-kernels compiles its kernels with cudaforge, which uses half the cores unless told.
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cuda}
out=${out:-$CARGO_TARGET_DIR/bin}
python=${PYTHON:-python3}

# Pinned CUDA 13.0 wheels: together they hold nvcc (+ its crt headers and cicc), the runtime headers,
# CCCL, cuBLAS, cuRAND, NVRTC and NCCL. Laid out as nvidia/cu13/{bin,include,lib,nvvm}, nvidia/nccl.
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
  nvidia-cuda-nvrtc==13.0.88
  nvidia-nccl-cu13==2.28.3
)

install_wheels() {
  local prefix=$1 stamp="$1/.installed"
  if [[ -f $stamp && $(cat "$stamp") == "${wheels[*]}" ]]; then
    return
  fi
  echo "installing a CUDA 13.0 toolchain from PyPI into $prefix (about 1 GB) ..." >&2
  rm -rf "$prefix.tmp"
  "$python" -m pip install --quiet --no-deps --only-binary=:all: --no-compile --target "$prefix.tmp/site" \
    "${wheels[@]}"
  rm -rf "$prefix"
  mv "$prefix.tmp" "$prefix"
  echo "${wheels[*]}" >"$stamp"
}

# The wheels ship libraries under versioned names only (libcudart.so.13); the linker looks for libX.so.
link_unversioned() {
  local dir=$1 lib base
  for lib in "$dir"/lib*.so.*; do
    [[ -e $lib ]] || continue
    base=${lib%%.so.*}.so
    [[ -e $base ]] || ln -s "$(basename "$lib")" "$base"
  done
}

# A libcuda.so (soname libcuda.so.1) that defines every driver function cudarc declares. Only the
# symbols' names matter to the linker; nothing here ever runs.
make_driver_stub() {
  local dir=$1
  [[ -f $dir/libcuda.so ]] && return
  local sys
  sys=$(cargo metadata --format-version 1 --features nerpos-train/cuda --manifest-path "$root/Cargo.toml" |
    "$python" -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="cudarc"))')
  sys=$(dirname "$sys")/src/driver/sys
  mkdir -p "$dir"
  grep -rhoE '\bfn cu[A-Za-z0-9_]+\(' "$sys" | sed -E 's/fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u |
    awk '{print "void " $1 "(void) {}"}' >"$dir/stub.c"
  [[ -s $dir/stub.c ]] || { echo "error: found no driver functions under $sys" >&2; exit 1; }
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/libcuda.so" "$dir/stub.c"
}

if command -v nvcc >/dev/null; then
  cuda_home=$(cd "$(dirname "$(command -v nvcc)")/.." && pwd)
elif [[ -n ${CUDA_HOME:-} && -x $CUDA_HOME/bin/nvcc ]]; then
  cuda_home=$CUDA_HOME
else
  prefix=${NERPOS_CUDA_PREFIX:-$root/.cuda13}
  install_wheels "$prefix"
  cuda_home=$prefix/site/nvidia/cu13
  nccl_home=$prefix/site/nvidia/nccl
  link_unversioned "$cuda_home/lib"
  link_unversioned "$nccl_home/lib"
  make_driver_stub "$prefix/stubs"
  export LIBRARY_PATH="$prefix/stubs:$nccl_home/lib:$cuda_home/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export CPATH="$nccl_home/include${CPATH:+:$CPATH}"
fi
export CUDA_HOME=$cuda_home CUDA_PATH=$cuda_home CUDA_ROOT=$cuda_home
export PATH="$cuda_home/bin:$PATH"
export LIBRARY_PATH="$cuda_home/lib64:$cuda_home/lib:$cuda_home/lib64/stubs:$cuda_home/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
echo "CUDA toolchain: $cuda_home ($(nvcc --version | grep -o 'release [0-9.]*')), kernels for sm_$cap" >&2

features=(--features nerpos-train/cuda,nerpos-predict/cuda,nerpos-dist-check/cuda,nerpos-gpu-bench/cuda)
packages=(-p nerpos-train -p nerpos-predict -p nerpos-dist-check -p nerpos-gpu-bench)
if [[ $check == 1 ]]; then
  cargo clippy -j2 "${packages[@]}" -p nerpos-dist -p nerpos-model -p nerpos-kernels \
    "${features[@]}" --all-targets -- -D warnings
  exit 0
fi

bins=(nerpos-train nerpos-predict nerpos-dist-check nerpos-gpu-bench)
cargo build --release -j2 "${packages[@]}" "${features[@]}" $(printf -- '--bin %s ' "${bins[@]}")
mkdir -p "$out"
for b in "${bins[@]}"; do cp "$CARGO_TARGET_DIR/release/$b" "$out/$b.bin"; done
cp "$root/launch/cuda-env.sh" "$out/cuda-env.sh"
for b in "${bins[@]}"; do
  cat >"$out/$b" <<EOF
#!/usr/bin/env bash
# Runs $b.bin with the CUDA libraries on LD_LIBRARY_PATH (see cuda-env.sh).
here=\$(cd "\$(dirname "\${BASH_SOURCE[0]}")" && pwd)
source "\$here/cuda-env.sh"
exec "\$here/$b.bin" "\$@"
EOF
  chmod +x "$out/$b"
done
echo
echo "binaries in $out (run them through the wrappers of the same name):"
ls -l "$out"
echo "they need at run time (found through cuda-env.sh: system CUDA, else a Python environment's nvidia/*/lib):"
ldd "$out/nerpos-train.bin" | grep -E 'cuda|cublas|curand|nvrtc|nccl' | awk '{print "  " $1}' || true
