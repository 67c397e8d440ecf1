#!/usr/bin/env bash
# Training and evaluation throughput on the CPU, nerpos against the PyTorch reference at its best, in one
# run: MiniLM on the first 3,000 GMB training sentences, STEPS optimiser steps of 32 sentences each, no
# evaluation during training, the first 5 steps not timed (tests/reference/train_reference.py, torch CPU,
# 2 threads, SDPA attention). Rows:
#   PyTorch 1 × 32, random batches; PyTorch 1 × 32, Hugging Face's group_by_length order (the row to
#   beat); nerpos-train 1 × 32 packed, random batches (the default) and length-grouped; nerpos-train
#   2 processes × 16 (the same global batch).
# Then evaluation (forward only) on the whole dev split: PyTorch's no_grad forward on length-sorted
# batches of 64 against nerpos's evaluation of the model the 1 × 32 run saved. The 1 × 32 packed run is
# profiled (NERPOS_PROFILE=1): where its step time goes. Prints the tables (headed by the CPU and the
# vector tier each side ran at); writes runs/bench-train[-TIER]/results.json.
# Usage: tests/bench/train.sh [STEPS] [--tier avx2|avx512]   (default 40 steps, the CPU's own tier)
#   --tier avx2 on an AVX-512 machine measures both sides as on an AVX2 + FMA CPU: ours built with
#   RUSTFLAGS="--cfg nerpos_gemm_avx2" (gemm without its AVX-512 kernels, in target/avx2) and run with
#   NERPOS_CPU_TIER=avx2; PyTorch with ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2 and
#   ONEDNN_MAX_CPU_ISA=AVX2.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
steps=40 tier=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --tier) tier=$2; shift ;;
    *) steps=$1 ;;
  esac
  shift
done
bin=target/release out=runs/bench-train torch_env=() ours_env=()
case $tier in
  "") ;;
  avx512) out=runs/bench-train-avx512 ours_env=(NERPOS_CPU_TIER=avx512)
          torch_env=(ATEN_CPU_CAPABILITY=avx512 MKL_ENABLE_INSTRUCTIONS=AVX512 ONEDNN_MAX_CPU_ISA=AVX512_CORE) ;;
  avx2) out=runs/bench-train-avx2 bin=target/avx2/release ours_env=(NERPOS_CPU_TIER=avx2)
        torch_env=(ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2)
        export RUSTFLAGS="--cfg nerpos_gemm_avx2" CARGO_TARGET_DIR=target/avx2 ;;
  *) echo "error: --tier $tier: expected avx2 or avx512" >&2; exit 2 ;;
esac
# The same build as launch/train.sh's (one feature set: no second rebuild of the dependencies), plus the
# evaluation example.
cargo build --release -j2 --bin nerpos-launch --bin nerpos-train --bin nerpos-prep >&2
cargo build --release -j2 -p nerpos-train --example eval_folder >&2
NERPOS_PREP=$bin/nerpos-prep launch/prepare-gmb.sh >&2
python=$(tests/reference/setup-venv.sh requirements-model.txt)
rm -rf "$out" && mkdir -p "$out"
# What each side runs at: the CPU, our kernels' and products' tiers, PyTorch's ATen capability.
env "${ours_env[@]}" "$bin/nerpos-train" --tier-info >"$out/tier-nerpos.txt"
env "${torch_env[@]}" "$python" -c 'import torch; print(torch.backends.cpu.get_cpu_capability())' \
  >"$out/tier-pytorch.txt"
echo "torch env: ${torch_env[*]:-none}" >>"$out/tier-pytorch.txt"
common=(--set train_sentences=3000 --set "max_steps=$steps" --set eval_every=1000000 --set test_at_end=false
        --set eval_sentences=1 --set log_every=1 --set lr=1e-4 --set warmup_ratio=0.1)
ref=(tests/reference/train_reference.py --data datasets/gmb-minilm --model data/models/all-MiniLM-L6-v2
     --train-sentences 3000 --batch-size 32 --epochs 1 --max-steps "$steps" --no-eval --threads 2)

ours() { # NAME NPROC BATCH GROUPING [ENV...]
  local name=$1 nproc=$2 batch=$3 grouping=$4
  shift 4
  env "${ours_env[@]}" "$@" "$bin/nerpos-launch" train --config configs/gmb-minilm-3k.toml --gpus 0 --nproc "$nproc" \
    --set "out=$out/$name" --set "batch_size=$batch" --set "length_grouping=$grouping" "${common[@]}" \
    >"$out/$name.log" 2>&1
}
echo "PyTorch reference, 1 × 32, random batches ..." >&2
env "${torch_env[@]}" "$python" "${ref[@]}" >"$out/pytorch-random.json" 2>"$out/pytorch-random.log"
echo "PyTorch reference, 1 × 32, group_by_length ..." >&2
env "${torch_env[@]}" "$python" "${ref[@]}" --group-by-length >"$out/pytorch-grouped.json" 2>"$out/pytorch-grouped.log"
echo "nerpos-train 1 × 32 packed, random (profiled) ..." >&2
ours 1x32 1 32 false NERPOS_PROFILE=1
for run in "1x32-grouped 1 32 true" "2x16 2 16 false"; do
  set -- $run
  echo "nerpos-train $1 ..." >&2
  ours "$@"
done
echo "evaluation speed: PyTorch, then nerpos ..." >&2
env "${torch_env[@]}" "$python" tests/reference/train_reference.py --data datasets/gmb-minilm \
  --model data/models/all-MiniLM-L6-v2 --eval-speed --threads 2 >"$out/pytorch-eval.json" 2>"$out/pytorch-eval.log"
env "${ours_env[@]}" RAYON_NUM_THREADS=2 "$bin/examples/eval_folder" "$out/1x32/last" datasets/gmb-minilm dev \
  >"$out/nerpos-eval.json" 2>"$out/nerpos-eval.log"

"$python" - "$out" <<'PY'
import json, sys, statistics as st
out = sys.argv[1]
last = lambda p: json.loads(open(p).read().strip().splitlines()[-1])
rows = []
for name, label in [("pytorch-random", "PyTorch 1 × 32, random batches"),
                    ("pytorch-grouped", "PyTorch 1 × 32, group_by_length (HF Trainer)")]:
    r = last(f"{out}/{name}.json")
    rows.append((label, r["sentences_per_s"], r["tokens_per_s"], None, None, None, None))
for name, label in [("1x32", "nerpos-train 1 × 32, packed, random batches (default)"),
                    ("1x32-grouped", "nerpos-train 1 × 32, packed, length-grouped"),
                    ("2x16", "nerpos-train 2 × 16, packed, random batches")]:
    lines = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")][5:]
    step = sum(l["step_s"] for l in lines)
    sps = sum(l["sentences_per_s"] * l["step_s"] for l in lines) / step
    tps = sum(l["tokens_per_s"] * l["step_s"] for l in lines) / step
    rows.append((label, sps, tps, st.median(l["step_s"] for l in lines),
                 sum(l["allreduce_s"] for l in lines) / step,
                 sum(l.get("allreduce_total_s", 0.0) for l in lines) / step,
                 sum(l["data_wait_s"] for l in lines) / step))
best = rows[1][1]
f = lambda v, fmt: "" if v is None else fmt.format(v)
tiers = {"nerpos": open(f"{out}/tier-nerpos.txt").read().strip(),
         "pytorch": " ".join(open(f"{out}/tier-pytorch.txt").read().split())}
print(f"CPU and tiers — nerpos: {tiers['nerpos']}; PyTorch ATen capability: {tiers['pytorch']}\n")
print("Training (sentences/s and real tokens/s; ratio against PyTorch with group_by_length):\n")
print("| run | sentences/s | real tokens/s | vs PyTorch grouped | step s (median) | all-reduce exposed | all-reduce total | data wait |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for label, sps, tps, step, ar, art, dw in rows:
    print(f"| {label} | {sps:.1f} | {tps:.0f} | {sps / best:.2f}× | {f(step, '{:.3f}')} | {f(ar, '{:.1%}')} | {f(art, '{:.1%}')} | {f(dw, '{:.1%}')} |")
pe, ne = last(f"{out}/pytorch-eval.json"), last(f"{out}/nerpos-eval.json")
print("\nEvaluation, forward only, whole dev split (%d sentences):\n" % ne["eval_sentences"])
print("| implementation | sentences/s | ratio |")
print("|---|---:|---:|")
print(f"| PyTorch, no_grad, length-sorted batches of 64 | {pe['eval_sentences_per_s']:.1f} | 1.00× |")
print(f"| nerpos (packed batches of 64 rows) | {ne['eval_sentences_per_s']:.1f} | {ne['eval_sentences_per_s'] / pe['eval_sentences_per_s']:.2f}× |")
prof = json.load(open(f"{out}/1x32/profile.json"))
print(f"\nWhere the 1 × 32 packed run's step time goes ({prof['steps']} steps, {prof['step_seconds']:.2f} s, all steps):\n")
print("| phase | seconds per step | share |")
print("|---|---:|---:|")
for p in prof["phases"]:
    print(f"| {p['phase']} | {p['seconds'] / prof['steps']:.4f} | {p['seconds'] / prof['step_seconds']:.1%} |")
json.dump({"training": [dict(zip(["run", "sentences_per_s", "tokens_per_s", "step_s_median", "allreduce_exposed_share",
                                  "allreduce_total_share", "data_wait_share"], r)) for r in rows],
           "evaluation": {"pytorch": pe, "nerpos": ne}, "profile": prof, "tiers": tiers},
          open(f"{out}/results.json", "w"), indent=1)
PY
