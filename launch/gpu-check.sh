#!/usr/bin/env bash
# The GPU check-and-benchmark suite: everything GPU-specific, on a machine with ≥ 1 NVIDIA GPU and no
# network, ending in one table (docs/gpu.md explains how to read it).
#
#   launch/gpu-check.sh --bundle DIR      (here, after launch/build-cuda.sh) pack binaries, the PyTorch
#                                         reference and a prepared dataset into DIR (< 60 MB)
#   DIR/gpu-check.sh [options]            (on the GPU machine) run the suite from the bundle
#   launch/gpu-check.sh [options]         run it from a checkout (target/cuda/bin, datasets/gmb-minilm)
#
# options: --out DIR (results; default ./gpu-check-results)   --quick (fewer steps, batch 32 only)
#          --only correctness|nccl|speed|train (repeatable)    --no-torch (skip the PyTorch reference)
#          --data DIR (a nerpos-prep dataset)                  --model DIR (checkpoint for `train`)
#          --epochs N (train; default 3)                       --train-precisions "f32 bf16 bf16-kernels"
#          (train: a precision, "-kernels" for the fused CUDA kernels on; PyTorch once per precision)
# `train` runs whole nerpos-train jobs (one GPU, full train split, batch 32, dev each epoch, test at the
# end) and the PyTorch reference training (tests/reference/train_reference.py) on the same data and
# settings. It runs when a checkpoint is there (checkout: data/models/all-MiniLM-L6-v2 or --model; a
# bundle: its model/). Its bundle holds the checkpoint in f16 (MiniLM: 45 MB instead of 91 MB, to fit a
# 64 MiB transfer), so it is packed alone: --bundle DIR --only train. Both trainers load those same
# f16-rounded weights into f32 masters.
# NERPOS_CHECK_DEVICE=cpu runs the train step on the CPU (to try this script without a GPU, with a
# stand-in nvidia-smi on PATH).
# Results: OUT/results.jsonl (one JSON object per measurement), OUT/table.md (the table), OUT/logs/.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

bundle="" out="" quick=0 torch=1 data="" model="" epochs=3 train_precisions="f32 bf16 bf16-kernels" only=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --bundle) bundle=$2; shift ;;
    --out) out=$2; shift ;;
    --quick) quick=1 ;;
    --no-torch) torch=0 ;;
    --data) data=$2; shift ;;
    --model) model=$2; shift ;;
    --epochs) epochs=$2; shift ;;
    --train-precisions) train_precisions=$2; shift ;;
    --only) only+=("$2"); shift ;;
    -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# ---- where things are: a bundle (bin/ beside this script) or a checkout (launch/ inside it)
if [[ -d $here/bin ]]; then
  bin=$here/bin bench=$here/bench reference=$here/reference data=${data:-$here/data/gmb}
  model=${model:-$here/model}
  # A bundle runs the steps it was packed for.
  if [[ ${#only[@]} -eq 0 ]]; then
    if [[ -d $here/model ]]; then only=(train); else only=(correctness nccl speed); fi
  fi
else
  root=$(cd "$here/.." && pwd)
  bin=$root/target/cuda/bin bench=$root/tests/bench reference=$root/tests/reference
  data=${data:-$root/datasets/gmb-minilm} model=${model:-$root/data/models/all-MiniLM-L6-v2}
fi
want() { [[ ${#only[@]} -eq 0 ]] || [[ " ${only[*]} " == *" $1 "* ]]; }

if [[ -n $bundle ]]; then
  command -v xz >/dev/null || { echo "error: --bundle needs xz (apt-get install xz-utils)" >&2; exit 1; }
  [[ -f $data/manifest.json ]] || { echo "error: no prepared dataset at $data (launch/quickstart.sh prepares one, or --data DIR)" >&2; exit 1; }
  tmp="$bundle.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp/bin" "$tmp/bench" "$tmp/data/gmb"
  bins=(nerpos-gpu-bench nerpos-dist-check)
  if [[ " ${only[*]} " == *" train "* ]]; then
    # The train step alone: the trainer, the reference scripts and the checkpoint in f16.
    [[ ${#only[@]} -eq 1 ]] || { echo "error: pack --only train alone (the f16 checkpoint fills the transfer)" >&2; exit 1; }
    [[ -f $model/config.json ]] || { echo "error: no checkpoint at $model (data/fetch-minilm.sh, or --model DIR)" >&2; exit 1; }
    bins=(nerpos-train)
    py=${PYTHON:-python3}
    [[ -x $here/../.venv-ref/bin/python ]] && py=$here/../.venv-ref/bin/python
    mkdir -p "$tmp/model" "$tmp/reference"
    cp "$model"/*.json "$model"/*.txt "$tmp/model/" 2>/dev/null
    "$py" - "$model/model.safetensors" "$tmp/model/model.safetensors" <<'PY' || { rm -rf "$tmp"; exit 1; }
import sys
import torch
from safetensors.torch import load_file, save_file
w = load_file(sys.argv[1])
big = max(float(t.abs().max()) for t in w.values() if t.is_floating_point())
if big > 60000:
    sys.exit(f"error: a weight of {big} does not fit f16: this checkpoint cannot travel in f16")
save_file({k: (t.half() if t.is_floating_point() else t).contiguous() for k, t in w.items()}, sys.argv[2],
          metadata={"format": "pt"})
PY
    xz -T0 -6 "$tmp/model/model.safetensors"  # f16 weights: 45 MB, 41 MB compressed
    cp "$reference/train_reference.py" "$reference/model_reference.py" "$tmp/reference/"
    # seqeval (the reference's scorer) is not in GPU images; it is published as a source archive only.
    "$py" -m pip wheel -q --no-deps -w "$tmp/wheels" seqeval==1.2.2 ||
      { rm -rf "$tmp"; echo "error: could not build a seqeval wheel" >&2; exit 1; }
  else
    cp "$bench/gpu_torch.py" "$tmp/bench/"
  fi
  for b in "${bins[@]}"; do
    [[ -x $bin/$b.bin ]] || { rm -rf "$tmp"; echo "error: no $bin/$b.bin: run launch/build-cuda.sh first" >&2; exit 1; }
    # Stripped (no debug line tables) and xz-compressed: candle's PTX and kernels make each binary
    # 40-55 MB, 4-7 MB compressed. The suite unpacks them on first run.
    strip -o "$tmp/bin/$b.bin" "$bin/$b.bin" 2>/dev/null || cp "$bin/$b.bin" "$tmp/bin/$b.bin"
    xz -T0 -6 "$tmp/bin/$b.bin"
    cp "$bin/$b" "$tmp/bin/$b"
  done
  cp "$bin/cuda-env.sh" "$tmp/bin/"
  cp "$here/gpu-check.sh" "$tmp/"
  cp -r "$data"/. "$tmp/data/gmb/"
  rm -rf "$bundle" && mv "$tmp" "$bundle"
  size=$(du -sm "$bundle" | cut -f1)
  echo "bundle: $bundle ($size MB); on the GPU machine run: $bundle/gpu-check.sh"
  [[ $size -lt 60 ]] || { echo "error: the bundle is $size MB, over the 60 MB budget" >&2; exit 1; }
  exit 0
fi

# A bundle's binaries (and checkpoint) travel compressed: unpack them (xz, else Python's lzma).
for packed in "$bin"/*.bin.xz "$model"/*.safetensors.xz; do
  [[ -e $packed ]] || continue
  unpacked=${packed%.xz}
  [[ -e $unpacked ]] && continue
  if command -v xz >/dev/null; then
    xz -dkc "$packed" >"$unpacked.tmp"
  else
    "${PYTHON:-python3}" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$packed" "$unpacked.tmp"
  fi
  [[ $packed == *.bin.xz ]] && chmod +x "$unpacked.tmp"
  mv "$unpacked.tmp" "$unpacked"
done

out=${out:-$PWD/gpu-check-results}
mkdir -p "$out/logs"
results=$out/results.jsonl
: >"$results"
failures=0

command -v nvidia-smi >/dev/null || { echo "error: nvidia-smi not found: this suite needs an NVIDIA GPU" >&2; exit 1; }
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
cuda_version=$(nvidia-smi | grep -o 'CUDA Version: [0-9.]*' | awk '{print $3}')
case $gpu_name in
  *H100*|*H200*|*GH200*) peak=989 ;;
  *A100*) peak=312 ;;
  *L40S*) peak=362 ;;
  *) peak="" ;;
esac
python=${PYTHON:-python3}
if [[ $torch == 1 ]] && ! "$python" -c 'import torch, transformers' 2>/dev/null; then
  echo "note: python3 with torch and transformers not found; the PyTorch reference is skipped" >&2
  torch=0
fi
echo "{\"check\": \"machine\", \"gpu\": \"$gpu_name\", \"gpus\": $gpus, \"driver\": \"$driver\", \"cuda\": \"$cuda_version\", \"peak_bf16_tflops\": ${peak:-null}, \"date\": \"$(date -u +%FT%TZ)\"}" >>"$results"
echo "GPU: $gpus × $gpu_name, driver $driver (CUDA $cuda_version); results in $out"

# run NAME TIMEOUT CMD...: runs a step, keeps its log, appends its JSON lines to the results.
run() {
  local name=$1 limit=$2; shift 2
  local log=$out/logs/$name.log t0=$SECONDS
  echo "== $name" >&2
  timeout "$limit" "$@" >"$log" 2>&1
  local rc=$?
  # (steps whose JSON lines are not measurements set no_results=1 and summarise their own)
  [[ ${no_results:-0} == 1 ]] || grep -E '^\{' "$log" >>"$results"
  if [[ $rc -ne 0 ]]; then
    failures=$((failures + 1))
    # The error line itself (a Rust backtrace after it would fill the tail).
    local error
    error=$(grep -m1 -E '^(Error|error)' "$log" | "$python" -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))' 2>/dev/null || echo '""')
    echo "{\"check\": \"failed\", \"step\": \"$name\", \"exit\": $rc, \"error\": ${error:-\"\"}, \"tail\": $(tail -5 "$log" | "$python" -c 'import json,sys; print(json.dumps(sys.stdin.read()))' 2>/dev/null || echo '""')}" >>"$results"
    if [[ -n $error && $error != '""' ]]; then
      echo "   FAILED (exit $rc after $((SECONDS - t0)) s): $(grep -m1 -E '^(Error|error)' "$log") (log: $log)" >&2
    else
      echo "   FAILED (exit $rc after $((SECONDS - t0)) s); last lines of $log:" >&2
      tail -5 "$log" >&2
    fi
  else
    echo "   ok ($((SECONDS - t0)) s)" >&2
  fi
}

steps=30
if want correctness; then
  # Every fused CUDA kernel against its CPU kernel, then whole training steps with and without them.
  run kernels 240 "$bin/nerpos-gpu-bench" kernels
  run correctness 240 "$bin/nerpos-gpu-bench" correctness --data "$data" --steps $steps --batch 16
  run correctness-kernels 240 "$bin/nerpos-gpu-bench" correctness --data "$data" --steps $steps --batch 16 --gpu-kernels
fi

if want nccl; then
  run nccl-check-w1 120 "$bin/nerpos-dist-check" --spawn 1 --device cuda check
  run nccl-bench-w1 120 "$bin/nerpos-dist-check" --spawn 1 --device cuda bench --sizes-mb 25,256
  if [[ $gpus -ge 2 ]]; then
    run nccl-check-w$gpus 300 "$bin/nerpos-dist-check" --spawn "$gpus" --device cuda check
    run nccl-bench-w$gpus 300 "$bin/nerpos-dist-check" --spawn "$gpus" --device cuda bench --sizes-mb 25,256
  fi
fi

if want speed; then
  timed=20 warm=5 sizes="32 128"
  [[ $quick == 1 ]] && timed=8 warm=3 sizes="32"
  for b in $sizes; do
    for shape in minilm base; do
      batches=$out/logs/batches-$shape-$b.jsonl
      for p in f32 tf32 bf16; do
        dump=()
        [[ $p == f32 ]] && dump=(--dump-batches "$batches")
        run "speed-$shape-b$b-$p" 300 "$bin/nerpos-gpu-bench" speed --data "$data" --shape $shape --batch "$b" \
          --precision $p --steps $timed --warmup $warm --grouped ${peak:+--peak-tflops $peak} "${dump[@]}"
        # The same batches with the fused CUDA kernels.
        [[ $p == tf32 ]] ||
          run "speed-$shape-b$b-$p-kernels" 300 "$bin/nerpos-gpu-bench" speed --data "$data" --shape $shape \
            --batch "$b" --precision $p --steps $timed --warmup $warm --grouped --gpu-kernels ${peak:+--peak-tflops $peak}
      done
      if [[ $torch == 1 && -f $batches ]]; then
        # f32, TF32, bf16 AMP, bf16 with every batch padded to 128 (the reference notebook's setting),
        # and bf16 with PyTorch's default cuDNN attention (see gpu_torch.py).
        run "torch-$shape-b$b" 300 "$python" "$bench/gpu_torch.py" --batches "$batches" --shape $shape \
          --runs f32,tf32,bf16,bf16:128,bf16::cudnn --warmup $warm
      fi
      rm -f "$batches"
    done
  done
  # Model FLOPs utilisation at 16,384 real tokens per batch (BERT-base, bf16), without and with the
  # fused kernels.
  for k in "" --gpu-kernels; do
    run "speed-base-t16384-bf16${k:+-kernels}" 300 "$bin/nerpos-gpu-bench" speed --data "$data" --shape base \
      --batch 0 --batch-tokens 16384 --precision bf16 --steps $timed --warmup $warm ${peak:+--peak-tflops $peak} $k
  done
fi

if want train && [[ -f $model/config.json ]]; then
  # Whole training jobs: nerpos-train on one GPU, then the PyTorch reference on the same data, model and
  # settings (its batch order and dropout masks are its own, so F1 agrees to seed noise, not to rounding).
  work=${TMPDIR:-/tmp}/nerpos-gpu-train
  rm -rf "$work" && mkdir -p "$work"
  for p in $train_precisions; do
    run_dir=$work/nerpos-$p
    kernels=false
    [[ $p == *-kernels ]] && kernels=true
    cat >"$out/logs/train-nerpos-$p.toml" <<TOML
data = "$data"
model = "$model"
out = "$run_dir"
device = "${NERPOS_CHECK_DEVICE:-cuda}"
precision = "${p%-kernels}"
gpu_kernels = $kernels
batch_size = 32
epochs = $epochs
lr = 1e-4
warmup_ratio = 0.1
weight_decay = 0.01
max_grad_norm = 1.0
dropout = 0.2
seed = 42
TOML
    no_results=1 run "train-nerpos-$p" 900 "$bin/nerpos-train" --config "$out/logs/train-nerpos-$p.toml"
    mkdir -p "$out/logs/train-nerpos-$p"
    cp "$run_dir"/summary.json "$run_dir"/metrics.jsonl "$run_dir"/config.toml "$run_dir"/curves.svg "$out/logs/train-nerpos-$p/" 2>/dev/null
    cp -r "$run_dir"/eval "$out/logs/train-nerpos-$p/" 2>/dev/null
    "$python" - "$run_dir" "$p" "$epochs" >>"$results" <<'PY'
import json, os, sys
run, precision, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
if not os.path.exists(os.path.join(run, "summary.json")):
    sys.exit(0)
s = json.load(open(os.path.join(run, "summary.json")))
m = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if l.strip()]
m = [r for r in m if "step_s" in r]
# Each log line holds the mean step time and the rate over the steps since the previous line. The
# first interval holds the one-time start-up (kernel loading, PTX JIT, cuBLAS): reported apart, and left
# out of the rate, as the reference leaves out its first 5 steps.
intervals, prev = [], 0
for r in m:
    n = r["step"] - prev
    prev = r["step"]
    intervals.append((r["step_s"] * n, r["sentences_per_s"] * r["step_s"] * n))
train_s = sum(t for t, _ in intervals)
steady = intervals[1:] or intervals
print(json.dumps({"check": "train", "impl": "nerpos", "precision": precision, "epochs": epochs,
                  "steps": s["steps"], "best_dev_f1": s["best_dev_f1"], "test_f1": s["test_f1"],
                  "wall_s": s["wall_s"], "train_step_s": train_s, "first_interval_s": intervals[0][0],
                  "sentences_per_s": sum(n for _, n in steady) / sum(t for t, _ in steady)}))
PY
    # The reference runs once per precision (the kernels are ours).
    [[ $kernels == true ]] && continue
    if [[ $torch == 1 && -d $here/wheels ]] && ! "$python" -c 'import seqeval' 2>/dev/null; then
      "$python" -m pip install -q --no-index --no-deps --target "$work/site" "$here"/wheels/*.whl &&
        export PYTHONPATH=$work/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    if [[ $torch == 1 ]] && "$python" -c 'import seqeval, pyarrow' 2>/dev/null; then
      no_results=1 run "train-torch-$p" 900 "$python" "$reference/train_reference.py" --data "$data" --model "$model" \
        --batch-size 32 --epochs "$epochs" --lr 1e-4 --device "${NERPOS_CHECK_DEVICE:-cuda}" --precision "$p" --threads 8
      tail -1 "$out/logs/train-torch-$p.log" | "$python" -c '
import json, sys
r = json.loads(sys.stdin.read())
print(json.dumps({"check": "train", "impl": "pytorch", "precision": r["precision"], "epochs": int(sys.argv[1]),
                  "steps": r["steps"], "best_dev_f1": r["best_dev_f1"], "test_f1": None, "wall_s": r["seconds"],
                  "train_step_s": r["train_step_seconds"], "sentences_per_s": r["sentences_per_s"]}))' "$epochs" >>"$results" 2>/dev/null
    elif [[ $torch == 1 ]]; then
      echo "note: python3 lacks seqeval or pyarrow: the PyTorch training reference is skipped" >&2
    fi
  done
  rm -rf "$work"
fi

# ---- the table
"$python" - "$results" "$out/table.md" <<'PY' || cat "$results"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = []
m = next((r for r in rows if r.get("check") == "machine"), {})
out.append(f"GPU: {m.get('gpus')} × {m.get('gpu')}, driver {m.get('driver')}, CUDA {m.get('cuda')}, {m.get('date')}\n")
out.append("| check | result | detail |\n| --- | --- | --- |")
for r in rows:
    c = r.get("check")
    if c == "correctness":
        fk = " with the fused kernels" if r.get("gpu_kernels") else ""
        out.append(f"| GPU f32{fk} vs CPU, {r['steps']} steps ({r['shape']}, batch {r['batch']}) | {'PASS' if r['pass_gpu_vs_cpu'] else 'FAIL'} | "
                   f"loss max rel diff {r['loss_max_rel_diff_gpu_vs_cpu']:.2e}; weights rel L2 {r['weights_rel_l2_diff_gpu_vs_cpu']:.2e}, max abs {r['weights_max_abs_diff_gpu_vs_cpu']:.2e} |")
        out.append(f"| fused vs composed AdamW on GPU, same {r['steps']} gradients | {'PASS' if r['pass_fused_adamw'] else 'FAIL'} | weights max abs diff {r['weights_max_abs_diff_fused_vs_plain_adamw']:.2e} |")
        if "trajectory_weights_max_abs_diff_fused_vs_plain_adamw" in r:
            out.append(f"| (fused vs composed AdamW, two whole trajectories) | info | weights max abs diff {r['trajectory_weights_max_abs_diff_fused_vs_plain_adamw']:.2e}, rel L2 {r['trajectory_weights_rel_l2_diff_fused_vs_plain_adamw']:.2e} |")
        out.append(f"| bf16 vs f32 loss after {r['steps']} steps | {'PASS' if r['pass_bf16'] else 'FAIL'} | "
                   f"{r['loss_gpu_bf16'][-1]:.4f} vs {r['loss_gpu_f32'][-1]:.4f} ({100*r['bf16_final_loss_rel_diff']:.2f} %) |")
    elif c == "failed":
        last = r['tail'].strip().splitlines()[-1] if r['tail'].strip() else ''
        out.append(f"| {r['step']} | FAIL (exit {r['exit']}) | {r.get('error') or last} |")
    elif isinstance(c, str) and c.startswith("all_") or c in ("broadcast", "barrier"):
        pass
kern = [r for r in rows if r.get("check") == "kernel"]
for dtype in sorted({r["dtype"] for r in kern}):
    mine = [r for r in kern if r["dtype"] == dtype]
    bad = [r["kernel"] for r in mine if not r["pass"]]
    worst = max(mine, key=lambda r: r["max_rel_err"] / r["tolerance"])
    out.append(f"| fused CUDA kernels vs CPU kernels ({dtype}) | {'PASS' if not bad else 'FAIL'} | {len(mine)} checks; "
               f"{'failed: ' + ', '.join(bad) + '; ' if bad else ''}closest to its tolerance: {worst['kernel']} "
               f"{worst['max_rel_err']:.1e} (≤ {worst['tolerance']:.0e}) |")
ok = [r for r in rows if "ok" in r and "check" in r and r.get("rank", 0) == 0]
if ok:
    worlds = sorted({r["world"] for r in ok})
    for w in worlds:
        mine = [r for r in ok if r["world"] == w]
        bad = [r["check"] for r in mine if not r["ok"]]
        out.append(f"| NCCL collectives, world size {w} | {'PASS' if not bad else 'FAIL'} | {len(mine)} checks{': failed ' + ', '.join(bad) if bad else ''} |")
for r in rows:
    if "busbw_gb_s" in r:
        if r["world"] > 1:
            out.append(f"| all-reduce {r['what']}, world {r['world']} | {r['busbw_gb_s']:.1f} GB/s bus | {1e3*r['seconds']:.2f} ms |")
        else:
            out.append(f"| all-reduce {r['what']}, world 1 (no traffic: NCCL's local path) | {r['algbw_gb_s']:.1f} GB/s alg | {1e3*r['seconds']:.2f} ms |")
speed = [r for r in rows if r.get("check") == "speed"]
if speed:
    out.append("\n| model | batch | precision | impl | tokens/s | sentences/s | step ms | peak MiB | MFU | ours/PyTorch |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ref = {(r["shape"], r["batch"], r["precision"]): r for r in speed if r["impl"] == "pytorch" and not r.get("pad_to") and not r.get("cudnn_attention")}
    for r in speed:
        key = (r["shape"], r["batch"], r["precision"])
        impl = r["impl"] + (f" (pad {r['pad_to']})" if r.get("pad_to") else "") + (" (cuDNN attention)" if r.get("cudnn_attention") else "") \
            + (" + fused kernels" if r.get("gpu_kernels") else "")
        if r.get("batch_tokens"):
            key = None
        ratio = ""
        if r["impl"] == "nerpos" and key in ref:
            ratio = f"{r['tokens_per_s'] / ref[key]['tokens_per_s']:.2f}×"
            pad = next((q for q in speed if q["impl"] == "pytorch" and q.get("pad_to") and (q["shape"], q["batch"]) == key[:2]), None)
            if pad and r["precision"] == "bf16":
                ratio += f" ({r['tokens_per_s'] / pad['tokens_per_s']:.2f}× vs pad-128)"
        mfu = f"{100*r['mfu']:.1f} %" if r.get("mfu") is not None else ""
        mem = f"{r['peak_memory_mib']:.0f}" if r.get("peak_memory_mib") is not None else ""
        batch = f"{r['batch_tokens']:,} tokens" if r.get("batch_tokens") else r["batch"]
        out.append(f"| {r['shape']} | {batch} | {r['precision']} | {impl} | {r['tokens_per_s']:,.0f} | {r['sentences_per_s']:,.0f} | {r['step_ms']:.1f} | {mem} | {mfu} | {ratio} |")
if len(out) == 2:  # no check rows (a train-only run): no empty table
    out = out[:1]
train = [r for r in rows if r.get("check") == "train"]
if train:
    out.append("\n| whole training run (one GPU, batch 32) | impl | epochs | steps | best dev F1 | test F1 | wall s | in steps s | first 10 steps s | sentences/s | ours/PyTorch |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in train:
        # "bf16-kernels" (ours with the fused kernels) against PyTorch's bf16.
        ref = next((q for q in train if q["impl"] == "pytorch" and q["precision"] == r["precision"].removesuffix("-kernels")), None)
        ratio = f"{r['sentences_per_s'] / ref['sentences_per_s']:.2f}×" if r["impl"] == "nerpos" and ref else ""
        f = lambda v: f"{v:.4f}" if v is not None else "—"
        out.append(f"| {r['precision']} | {r['impl']} | {r['epochs']} | {r['steps']} | {f(r['best_dev_f1'])} | {f(r['test_f1'])} | "
                   f"{r['wall_s']:.0f} | {r['train_step_s']:.0f} | {f(r.get('first_interval_s'))[:5]} | {r['sentences_per_s']:,.0f} | {ratio} |")
text = "\n".join(out) + "\n"
print(text)
open(sys.argv[2], "w").write(text)
PY
if [[ $failures -gt 0 ]]; then
  echo "$failures step(s) failed: see $out/logs" >&2
  exit 1
fi
grep -q '"pass": false' "$results" && { echo "a correctness check failed" >&2; exit 1; }
grep -q '"ok": false' "$results" && { echo "an NCCL check failed" >&2; exit 1; }
exit 0
