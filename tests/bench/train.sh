#!/usr/bin/env bash
# Training throughput on the CPU: nerpos-train (1 process × 32 rows, 2 processes × 16 rows: the same
# global batch) against the PyTorch reference (tests/reference/train_reference.py, 1 process × 32 rows),
# MiniLM on GMB, STEPS optimiser steps each, no evaluation; the first 5 steps of each are not timed.
# Prints a table (and writes runs/bench-train/results.json).
# Usage: tests/bench/train.sh [STEPS]   (default 40)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
steps=${1:-40}
# The same build as launch/train.sh's (one feature set: no second rebuild of the dependencies).
cargo build --release -j2 --bin nerpos-launch --bin nerpos-train --bin nerpos-prep >&2
NERPOS_PREP=target/release/nerpos-prep launch/prepare-gmb.sh >&2
python=$(tests/reference/setup-venv.sh requirements-model.txt)
out=runs/bench-train
rm -rf "$out" && mkdir -p "$out"
common=(--set train_sentences=3000 --set "max_steps=$steps" --set eval_every=1000000 --set test_at_end=false
        --set log_every=1 --set lr=1e-4 --set warmup_ratio=0.1)

ours() { # NAME NPROC BATCH GROUPING
  target/release/nerpos-launch train --config configs/gmb-minilm-3k.toml --gpus 0 --nproc "$2" \
    --set "out=$out/$1" --set "batch_size=$3" --set "length_grouping=$4" "${common[@]}" >"$out/$1.log" 2>&1
}
echo "PyTorch reference, 1 process × 32 ..." >&2
"$python" tests/reference/train_reference.py --data datasets/gmb-minilm --model data/models/all-MiniLM-L6-v2 \
  --train-sentences 3000 --batch-size 32 --epochs 1 --max-steps "$steps" --no-eval --threads 2 \
  >"$out/pytorch.json" 2>"$out/pytorch.log"
for run in "1x32-random 1 32 false" "1x32-grouped 1 32 true" "2x16-grouped 2 16 true"; do
  set -- $run
  echo "nerpos-train $1 ..." >&2
  ours "$@"
done
"$python" - "$out" <<'PY'
import json, sys, statistics as st
out = sys.argv[1]
ref = json.loads(open(f"{out}/pytorch.json").read().strip().splitlines()[-1])
rows = [("PyTorch reference (1 × 32, random batches)", ref["sentences_per_s"], None, None, None)]
for name, label in [("1x32-random", "nerpos-train 1 × 32, random batches"), ("1x32-grouped", "nerpos-train 1 × 32, length-grouped"),
                    ("2x16-grouped", "nerpos-train 2 × 16, length-grouped")]:
    lines = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")][5:]
    step = sum(l["step_s"] for l in lines)
    sps = sum(l["sentences_per_s"] * l["step_s"] for l in lines) / step
    rows.append((label, sps, st.median(l["step_s"] for l in lines), sum(l["allreduce_s"] for l in lines) / step,
                 sum(l["data_wait_s"] for l in lines) / step))
print("| run | sentences/s | vs PyTorch | step s (median) | all-reduce share | data-wait share |")
print("|---|---:|---:|---:|---:|---:|")
for label, sps, step, ar, dw in rows:
    f = lambda v, fmt: "" if v is None else fmt.format(v)
    print(f"| {label} | {sps:.1f} | {sps / rows[0][1]:.2f}× | {f(step, '{:.3f}')} | {f(ar, '{:.1%}')} | {f(dw, '{:.1%}')} |")
json.dump([dict(zip(["run", "sentences_per_s", "step_s_median", "allreduce_share", "data_wait_share"], r)) for r in rows],
          open(f"{out}/results.json", "w"), indent=1)
PY
