#!/usr/bin/env bash
# Sourced by the CUDA binaries' wrappers (launch/build-cuda.sh writes them): puts the CUDA run-time
# libraries nerpos links (cuBLAS, cuRAND, NVRTC, the CUDA runtime, NCCL) on LD_LIBRARY_PATH.
# Looked for in order: NERPOS_CUDA_LIBS (colon-separated folders), the system CUDA (CUDA_HOME or nvcc
# on PATH), the Python environment's nvidia/*/lib (PyTorch's CUDA wheels), and the toolchain that
# launch/build-cuda.sh installed. The driver (libcuda.so.1) always comes from the system.
_nerpos_libs=()
[[ -n ${NERPOS_CUDA_LIBS:-} ]] && _nerpos_libs+=("$NERPOS_CUDA_LIBS")
_nerpos_cuda=${CUDA_HOME:-}
if [[ -z $_nerpos_cuda ]] && command -v nvcc >/dev/null 2>&1; then
  _nerpos_cuda=$(cd "$(dirname "$(command -v nvcc)")/.." && pwd)
fi
for _d in "$_nerpos_cuda/lib64" "$_nerpos_cuda/lib"; do
  [[ -n $_nerpos_cuda && -d $_d ]] && _nerpos_libs+=("$_d")
done
for _py in ${PYTHON:-python3}; do
  command -v "$_py" >/dev/null 2>&1 || continue
  for _sp in $("$_py" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
    for _d in "$_sp"/nvidia/*/lib; do [[ -d $_d ]] && _nerpos_libs+=("$_d"); done
  done
done
_nerpos_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for _d in "$_nerpos_here"/../../../.cuda13/site/nvidia/*/lib "$_nerpos_here"/../.cuda13/site/nvidia/*/lib; do
  [[ -d $_d ]] && _nerpos_libs+=("$(cd "$_d" && pwd)")
done
if [[ ${#_nerpos_libs[@]} -gt 0 ]]; then
  LD_LIBRARY_PATH=$(IFS=:; echo "${_nerpos_libs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export LD_LIBRARY_PATH
fi
unset _nerpos_libs _nerpos_cuda _nerpos_here _d _sp _py
