#!/usr/bin/env bash
# One command to train: builds what is needed (release), prepares the default data when the config
# uses it, and starts nerpos-train processes through nerpos-launch — one per GPU, or CPU processes.
#
#   launch/train.sh [--config FILE] [--gpus N | --nproc N] [--set KEY=VALUE]... [--resume RUN_DIR]
#                   [--nnodes N --node-rank K --master-addr HOST --master-port PORT]
#   launch/train.sh grid --config FILE [--gpus-per-run K] [--sample N] [...]   (hyper-parameter grid)
#   launch/train.sh collect SWEEP_DIR                                          (re-write a sweep's tables)
#
# Without --config: configs/quickstart.toml. Without --gpus: every GPU nvidia-smi lists, else
# --nproc (default 2) CPU processes. GPU runs use the CUDA build (launch/build-cuda.sh).
# Ctrl-C/SIGTERM: every rank checkpoints and stops; resume with --resume RUN_DIR.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

sub=train
if [[ ${1:-} == grid || ${1:-} == collect ]]; then
  sub=$1
  shift
fi
args=("$@")
config="" gpus="" resume=""
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --config) config=${args[i + 1]:-} ;;
    --config=*) config=${args[i]#--config=} ;;
    --gpus) gpus=${args[i + 1]:-} ;;
    --gpus=*) gpus=${args[i]#--gpus=} ;;
    --resume) resume=${args[i + 1]:-} ;;
  esac
done
if [[ $sub != collect && -z $config && -z $resume ]]; then
  config=configs/quickstart.toml
  args+=(--config "$config")
fi
if [[ -z $gpus ]]; then
  gpus=0
  command -v nvidia-smi >/dev/null 2>&1 && gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
  [[ $sub != collect ]] && args+=(--gpus "$gpus")
fi

# Build: the launcher (CPU), and the trainer for the device the run uses.
release=${CARGO_TARGET_DIR:-$root/target}/release
# Only the three binaries a run needs (not nerpos-train's GPU benchmark): a cold release build is most of
# a first run's time on a small machine.
cargo build --release -j2 --bin nerpos-launch --bin nerpos-train --bin nerpos-prep
if [[ $gpus -gt 0 && $sub != collect ]]; then
  launch/build-cuda.sh
  export NERPOS_TRAIN=$root/target/cuda/bin/nerpos-train
fi

# The default configs train on datasets/gmb-minilm with MiniLM: prepare them when missing.
if [[ -n $config ]] && grep -Eq '^[[:space:]]*data[[:space:]]*=[[:space:]]*"datasets/gmb-minilm"' "$config"; then
  NERPOS_PREP=$release/nerpos-prep launch/prepare-gmb.sh
fi

exec "$release/nerpos-launch" "$sub" "${args[@]}"
