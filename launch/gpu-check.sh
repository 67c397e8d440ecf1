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
#          --only correctness|nccl|speed (repeatable)          --no-torch (skip the PyTorch reference)
#          --data DIR (a nerpos-prep dataset)
# Results: OUT/results.jsonl (one JSON object per measurement), OUT/table.md (the table), OUT/logs/.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

bundle="" out="" quick=0 torch=1 data="" only=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --bundle) bundle=$2; shift ;;
    --out) out=$2; shift ;;
    --quick) quick=1 ;;
    --no-torch) torch=0 ;;
    --data) data=$2; shift ;;
    --only) only+=("$2"); shift ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# ---- where things are: a bundle (bin/ beside this script) or a checkout (launch/ inside it)
if [[ -d $here/bin ]]; then
  bin=$here/bin bench=$here/bench data=${data:-$here/data/gmb}
else
  root=$(cd "$here/.." && pwd)
  bin=$root/target/cuda/bin bench=$root/tests/bench data=${data:-$root/datasets/gmb-minilm}
fi

if [[ -n $bundle ]]; then
  [[ -x $bin/nerpos-gpu-bench.bin ]] || { echo "error: no CUDA binaries in $bin: run launch/build-cuda.sh first" >&2; exit 1; }
  command -v xz >/dev/null || { echo "error: --bundle needs xz (apt-get install xz-utils)" >&2; exit 1; }
  [[ -f $data/manifest.json ]] || { echo "error: no prepared dataset at $data (launch/quickstart.sh prepares one, or --data DIR)" >&2; exit 1; }
  tmp="$bundle.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp/bin" "$tmp/bench" "$tmp/data/gmb"
  for b in nerpos-gpu-bench nerpos-dist-check; do
    # Stripped (no debug line tables) and xz-compressed: candle's PTX and kernels make each binary
    # 40-55 MB, 4-7 MB compressed. The suite unpacks them on first run.
    strip -o "$tmp/bin/$b.bin" "$bin/$b.bin" 2>/dev/null || cp "$bin/$b.bin" "$tmp/bin/$b.bin"
    xz -T0 -6 "$tmp/bin/$b.bin"
    cp "$bin/$b" "$tmp/bin/$b"
  done
  cp "$bin/cuda-env.sh" "$tmp/bin/"
  cp "$here/gpu-check.sh" "$tmp/"
  cp "$bench/gpu_torch.py" "$tmp/bench/"
  cp -r "$data"/. "$tmp/data/gmb/"
  rm -rf "$bundle" && mv "$tmp" "$bundle"
  size=$(du -sm "$bundle" | cut -f1)
  echo "bundle: $bundle ($size MB); on the GPU machine run: $bundle/gpu-check.sh"
  [[ $size -lt 60 ]] || { echo "error: the bundle is $size MB, over the 60 MB budget" >&2; exit 1; }
  exit 0
fi

# A bundle's binaries travel compressed: unpack them (xz, else Python's lzma).
for packed in "$bin"/*.bin.xz; do
  [[ -e $packed ]] || continue
  unpacked=${packed%.xz}
  [[ -x $unpacked ]] && continue
  if command -v xz >/dev/null; then
    xz -dkc "$packed" >"$unpacked.tmp"
  else
    "${PYTHON:-python3}" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$packed" "$unpacked.tmp"
  fi
  chmod +x "$unpacked.tmp" && mv "$unpacked.tmp" "$unpacked"
done

want() { [[ ${#only[@]} -eq 0 ]] || [[ " ${only[*]} " == *" $1 "* ]]; }
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
  grep -E '^\{' "$log" >>"$results"
  if [[ $rc -ne 0 ]]; then
    failures=$((failures + 1))
    echo "{\"check\": \"failed\", \"step\": \"$name\", \"exit\": $rc, \"tail\": $(tail -5 "$log" | "$python" -c 'import json,sys; print(json.dumps(sys.stdin.read()))' 2>/dev/null || echo '""')}" >>"$results"
    echo "   FAILED (exit $rc after $((SECONDS - t0)) s); last lines of $log:" >&2
    tail -5 "$log" >&2
  else
    echo "   ok ($((SECONDS - t0)) s)" >&2
  fi
}

steps=30
if want correctness; then
  run correctness 240 "$bin/nerpos-gpu-bench" correctness --data "$data" --steps $steps --batch 16
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
        out.append(f"| GPU f32 vs CPU, {r['steps']} steps ({r['shape']}, batch {r['batch']}) | {'PASS' if r['pass_gpu_vs_cpu'] else 'FAIL'} | "
                   f"loss max rel diff {r['loss_max_rel_diff_gpu_vs_cpu']:.2e}; weights rel L2 {r['weights_rel_l2_diff_gpu_vs_cpu']:.2e}, max abs {r['weights_max_abs_diff_gpu_vs_cpu']:.2e} |")
        out.append(f"| fused vs composed AdamW on GPU, same {r['steps']} gradients | {'PASS' if r['pass_fused_adamw'] else 'FAIL'} | weights max abs diff {r['weights_max_abs_diff_fused_vs_plain_adamw']:.2e} |")
        if "trajectory_weights_max_abs_diff_fused_vs_plain_adamw" in r:
            out.append(f"| (fused vs composed AdamW, two whole trajectories) | info | weights max abs diff {r['trajectory_weights_max_abs_diff_fused_vs_plain_adamw']:.2e}, rel L2 {r['trajectory_weights_rel_l2_diff_fused_vs_plain_adamw']:.2e} |")
        out.append(f"| bf16 vs f32 loss after {r['steps']} steps | {'PASS' if r['pass_bf16'] else 'FAIL'} | "
                   f"{r['loss_gpu_bf16'][-1]:.4f} vs {r['loss_gpu_f32'][-1]:.4f} ({100*r['bf16_final_loss_rel_diff']:.2f} %) |")
    elif c == "failed":
        out.append(f"| {r['step']} | FAIL (exit {r['exit']}) | {r['tail'].strip().splitlines()[-1] if r['tail'].strip() else ''} |")
    elif isinstance(c, str) and c.startswith("all_") or c in ("broadcast", "barrier"):
        pass
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
        impl = r["impl"] + (f" (pad {r['pad_to']})" if r.get("pad_to") else "") + (" (cuDNN attention)" if r.get("cudnn_attention") else "")
        ratio = ""
        if r["impl"] == "nerpos" and key in ref:
            ratio = f"{r['tokens_per_s'] / ref[key]['tokens_per_s']:.2f}×"
            pad = next((q for q in speed if q["impl"] == "pytorch" and q.get("pad_to") and (q["shape"], q["batch"]) == key[:2]), None)
            if pad and r["precision"] == "bf16":
                ratio += f" ({r['tokens_per_s'] / pad['tokens_per_s']:.2f}× vs pad-128)"
        mfu = f"{100*r['mfu']:.1f} %" if r.get("mfu") is not None else ""
        mem = f"{r['peak_memory_mib']:.0f}" if r.get("peak_memory_mib") is not None else ""
        out.append(f"| {r['shape']} | {r['batch']} | {r['precision']} | {impl} | {r['tokens_per_s']:,.0f} | {r['sentences_per_s']:,.0f} | {r['step_ms']:.1f} | {mem} | {mfu} | {ratio} |")
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
