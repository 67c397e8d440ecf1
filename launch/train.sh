#!/usr/bin/env bash
# One command to train: builds what is needed (release), prepares the default data when the config
# uses it, and starts nerpos-train processes through nerpos-launch — one per GPU, or CPU processes.
#
#   launch/train.sh [--config FILE] [--gpus N | --nproc N] [--set KEY=VALUE]... [--resume RUN_DIR]
#                   [--nnodes N --node-rank K --master-addr HOST --master-port PORT]
#   launch/train.sh grid --config FILE [--gpus-per-run K | --runs-per-gpu K [--memory-per-run MIB]]
#                   [--sample N] [...]                                        (hyper-parameter grid)
#   launch/train.sh collect SWEEP_DIR                                          (re-write a sweep's tables)
#
# Without --config: configs/quickstart.toml (a config with a [grid] runs its sweep). Without --gpus:
# every GPU this machine shows, else --nproc (default 2) CPU processes. GPU runs use the CUDA build
# (launch/build-cuda.sh). Ctrl-C/SIGTERM: every rank checkpoints and stops; resume with --resume RUN_DIR.
# Everything about configs and run folders is the binaries' business (nerpos-launch); this script only
# builds, prepares the default corpus, and hands over.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

sub=train
if [[ ${1:-} == grid || ${1:-} == collect ]]; then
  sub=$1
  shift
fi
args=("$@")
config="" gpus="" resume="" sets=()
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --config) config=${args[i + 1]:-} ;;
    --config=*) config=${args[i]#--config=} ;;
    --gpus) gpus=${args[i + 1]:-} ;;
    --gpus=*) gpus=${args[i]#--gpus=} ;;
    --resume) resume=${args[i + 1]:-} ;;
    --set) sets+=(--set "${args[i + 1]:-}") ;;
  esac
done
if [[ $sub != collect && -z $config && -z $resume ]]; then
  config=configs/quickstart.toml
  args+=(--config "$config")
fi

# GPUs asked for must be there before anything is built or downloaded (the CUDA toolchain is ~1 GB and
# its build ~15 minutes). Counted as nerpos-launch counts them: CUDA_VISIBLE_DEVICES, else nvidia-smi -L.
visible_gpus() {
  if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
    tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c '[^[:space:]]' || true
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else
    echo 0
  fi
}
if [[ $sub != collect && -n $gpus && $gpus != 0 ]]; then
  seen=$(visible_gpus)
  if ((seen < gpus)); then
    echo "error: --gpus $gpus, but this machine shows $seen GPU(s) (nvidia-smi -L; CUDA_VISIBLE_DEVICES)." >&2
    echo "To build the CUDA binaries here for jobs elsewhere (e.g. on a login node): launch/build-cuda.sh" >&2
    exit 1
  fi
fi

# Build: the launcher (CPU), the trainer and the corpus preparation; only the three binaries a run
# needs (a cold release build is most of a first run's time on a small machine).
release=${CARGO_TARGET_DIR:-$root/target}/release
cargo build --release -j2 --bin nerpos-launch --bin nerpos-train --bin nerpos-prep
launcher=$release/nerpos-launch
[[ -n $gpus ]] || gpus=$("$launcher" gpus)
if [[ $gpus -gt 0 && $sub != collect ]]; then
  launch/build-cuda.sh
  export NERPOS_TRAIN=$root/target/cuda/bin/nerpos-train
  [[ " ${args[*]} " == *" --gpus "* || " ${args[*]} " == *" --gpus="* ]] || args+=(--gpus "$gpus")
fi

# The default configs train on datasets/gmb-minilm with MiniLM: prepare them when missing.
data=""
if [[ -n $config ]]; then
  data=$("$launcher" config-value --config "$config" "${sets[@]}" --key data)
elif [[ -f $resume/config.toml ]]; then
  data=$("$launcher" config-value --config "$resume/config.toml" "${sets[@]}" --key data)
fi
case $data in
  datasets/gmb-minilm) NERPOS_PREP=$release/nerpos-prep launch/prepare-gmb.sh ;;
  datasets/gmb-minilm-11) NERPOS_PREP=$release/nerpos-prep launch/prepare-gmb.sh --design ;;
esac

exec "$launcher" "$sub" "${args[@]}"
