#!/usr/bin/env bash
# Benchmark tagging raw text (see text_bench.py): entity F1 of raw text against the gold tokens, words/s
# against PyTorch, peak memory. Usage: tests/bench/text.sh MODEL_DIR DATASET_DIR [SPLIT] [REPEAT] [--no-torch] [--no-bf16] [--big-gb GB]
# MODEL_DIR: a fine-tuned folder with a POS tagger (e.g. a run's best/); DATASET_DIR: the dataset it
# was trained on (its SPLIT, dev by default, is rendered as running text).
# NERPOS_BENCH_TIER=avx2 measures both sides as on an AVX2 + FMA CPU (see tests/bench/train.sh --tier):
# ours built with gemm's AVX2 kernels only (target/avx2) and NERPOS_CPU_TIER=avx2, PyTorch with
# ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2, ONEDNN_MAX_CPU_ISA=AVX2.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
bin=target/release
if [[ ${NERPOS_BENCH_TIER:-} == avx2 ]]; then
  export RUSTFLAGS="--cfg nerpos_gemm_avx2" CARGO_TARGET_DIR=target/avx2 NERPOS_CPU_TIER=avx2
  export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
  bin=target/avx2/release
elif [[ -n ${NERPOS_BENCH_TIER:-} ]]; then
  echo "error: NERPOS_BENCH_TIER=$NERPOS_BENCH_TIER: expected avx2 (or unset)" >&2; exit 2
fi
cargo build --release -j2 --bin nerpos-predict --bin nerpos-train >&2
python=$(tests/reference/setup-venv.sh requirements-model.txt)
echo "CPU and tiers — nerpos: $("$bin/nerpos-train" --tier-info); PyTorch ATen capability:" \
  "$("$python" -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')" >&2
"$python" tests/bench/text_bench.py --ours "$bin/nerpos-predict" --model "$1" \
  --dataset "$2" --split "${3:-dev}" --repeat "${4:-0}" "${@:5}"
