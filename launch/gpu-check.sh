#!/usr/bin/env bash
# The GPU check: every GPU target, in priority order, within a time budget — a GPU visit is rare and
# short (about 15 minutes in all, the machine's start included; at most 10 minutes a command), so the
# check spends what it is given on what matters most first and always leaves a table.
# docs/gpu.md explains the steps and how to read the results.
#
#   launch/gpu-check.sh --bundle DIR   (here, after launch/build-cuda.sh) pack the binaries, the PyTorch
#                                      references and a prepared dataset into DIR
#                                      (< 60 MB; no network needed on the GPU machine)
#   DIR/gpu-check.sh [options]         (on the GPU machine) run the check from the bundle
#   launch/gpu-check.sh [options]      run it from a checkout
#
# options: --budget SECONDS  the whole check's wall-clock budget (default 480): each step's timeout is
#                            its cap or what is left (less 15 s for the table), whichever is smaller;
#                            a step that cannot fit what is left is skipped, and the table says so
#          --out DIR         results (default ./gpu-check-results): results.jsonl appended as each step
#                            ends, table.md rewritten after each step, logs/STEP.log
#          --only STEP       only these steps (repeatable): kernels sanitizer correctness nonfinite
#                            base minilm profile kernel-times nccl train grid
#          --no-torch        skip the PyTorch references
#          --data DIR        a nerpos-prep dataset   --model DIR   a checkpoint (train step)
#          --bin DIR         the CUDA binaries (checkout default: target/cuda/bin)
#          --epochs N, --train-sentences N   the train step's job (default 3 epochs, all sentences)
#          --grid-sentences N   each grid point's training sentences (default 4000)
#
# Steps, most important first:
#   kernels      every fused CUDA kernel against its CPU kernel, launches blocking (a fault names its
#                kernel: CUDA_LAUNCH_BLOCKING=1)
#   sanitizer    the same on small cases under compute-sanitizer memcheck and racecheck (the GPU
#                machine's own; skipped when absent)
#   correctness  30 training steps on the GPU against the CPU, without and with the fused kernels
#   nonfinite    a NaN step (poisoned): the device guard leaves it out (`stop`: the steps after it
#                too), weights bit-identical, no device→host read in any step
#   base         BERT-base bf16 at 16,384 real tokens a step, without and with the kernels, and PyTorch
#                AMP at its best on the same sentences (HF length grouping, compiled, padding-free where
#                it can) beside PyTorch on our padded batches; ratios per real token (MFU)
#   minilm       MiniLM, batch 32, bf16: the same three
#   profile      where the GPU time goes (phases synchronised): both shapes with the kernels
#   kernel-times which kernels it goes to: Nsight Compute's durations for BERT-base (where ncu is)
#   nccl         NCCL on this GPU (world 1: the library loads, an all-reduce is right, sums queued as
#                the gradient buckets are read back right); with base, BERT-base's step over a world-1
#                NCCL communicator and its reduction alone: the exposed share (target ≤ 10 %)
#   train        a whole GMB job (bf16 + kernels) and PyTorch's on the same data and start
#   grid         small-model grid points per hour with K = 1, 2, 4 points sharing the GPU
#                (launch/train.sh grid --runs-per-gpu K: 4 short MiniLM points each)
# Trying it without a GPU: NERPOS_BENCH_DEVICE=cpu NERPOS_CHECK_DEVICE=cpu, a stand-in nvidia-smi on PATH.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

bundle="" out="" torch=1 data="" model="" bin="" epochs=3 train_sentences=0 grid_sentences=4000 budget=480 only=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --bundle) bundle=$2; shift ;;
    --budget) budget=$2; shift ;;
    --out) out=$2; shift ;;
    --no-torch) torch=0 ;;
    --data) data=$2; shift ;;
    --model) model=$2; shift ;;
    --bin) bin=$2; shift ;;
    --epochs) epochs=$2; shift ;;
    --train-sentences) train_sentences=$2; shift ;;
    --grid-sentences) grid_sentences=$2; shift ;;
    --only) only+=("$2"); shift ;;
    -h|--help) sed -n '2,41p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $budget =~ ^[0-9]+$ ]] || { echo "error: --budget takes whole seconds, not $budget" >&2; exit 2; }
started=$SECONDS

# ---- where things are: a bundle (bin/ beside this script) or a checkout (launch/ inside it)
if [[ -f $here/bundle.json ]]; then
  bin=${bin:-$here/bin} bench=$here/bench reference=$here/reference
  data=${data:-$here/data/gmb} model=${model:-$here/model} texts=$here/data/text
else
  root=$(cd "$here/.." && pwd)
  bin=${bin:-$root/target/cuda/bin} bench=$root/tests/bench reference=$root/tests/reference
  data=${data:-$root/datasets/gmb-minilm} model=${model:-$root/data/models/all-MiniLM-L6-v2}
  texts=${TMPDIR:-/tmp}/nerpos-gpu-texts
  [[ -f $texts/dev.conll ]] || "${PYTHON:-python3}" "$root/tests/bench/text_bench.py" --export "$texts" \
    --dataset "$data" >/dev/null 2>&1 || true
fi
python=${PYTHON:-python3}

if [[ -n $bundle ]]; then
  exec "$here/gpu-bundle.sh" "$bundle" "$bin" "$data" "$model"
fi

# ---- unpack what travels compressed (xz, else Python's lzma)
unpack() {
  local packed=$1 unpacked=${1%.xz}
  [[ -e $unpacked ]] && return 0
  if command -v xz >/dev/null; then xz -dkc "$packed" >"$unpacked.tmp"; else
    "$python" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$packed" "$unpacked.tmp"
  fi && mv "$unpacked.tmp" "$unpacked"
}
for packed in "$bin"/*.bin.xz; do
  [[ -e $packed ]] && unpack "$packed" && chmod +x "${packed%.xz}"
done

out=${out:-$PWD/gpu-check-results}
mkdir -p "$out/logs"
results=$out/results.jsonl
touch "$results"
failures=0

command -v nvidia-smi >/dev/null || { echo "error: nvidia-smi not found: this check needs an NVIDIA GPU" >&2; exit 1; }
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
cuda_version=$(nvidia-smi | grep -o 'CUDA Version: [0-9.]*' | awk '{print $3}')
case $gpu_name in
  *H100*|*H200*|*GH200*) peak=989 ;;
  *A100*) peak=312 ;;
  *L40S*) peak=362 ;;
  *) peak="" ;;
esac
if [[ $torch == 1 ]] && ! "$python" -c 'import torch, transformers' 2>/dev/null; then
  echo "note: python3 with torch and transformers not found: the PyTorch references are skipped" >&2
  torch=0
fi
echo "{\"check\": \"machine\", \"gpu\": \"$gpu_name\", \"driver\": \"$driver\", \"cuda\": \"$cuda_version\", \"peak_bf16_tflops\": ${peak:-null}, \"budget_s\": $budget, \"date\": \"$(date -u +%FT%TZ)\"}" >>"$results"
echo "GPU: $gpu_name, driver $driver (CUDA $cuda_version); budget $budget s; results in $out" >&2

want() { [[ ${#only[@]} -eq 0 ]] || [[ " ${only[*]} " == *" $1 "* ]]; }

# The binaries link cuRAND, which nerpos never calls (no random numbers are drawn on the GPU), and
# which recent PyTorch wheels no longer carry: when the machine has none, the bundle's stub (every
# cuRAND function the binaries name, each returning an error) lets them load.
missing=$(bash -c 'source "$1/cuda-env.sh"; ldd "$1/nerpos-gpu-bench.bin"' _ "$bin" 2>/dev/null | awk '/not found/ {print $1}')
if [[ $missing == libcurand.so.10 && -f $bin/stubs/libcurand.so.10 ]]; then
  export NERPOS_CUDA_LIBS=${NERPOS_CUDA_LIBS:+$NERPOS_CUDA_LIBS:}$bin/stubs
  echo "note: no libcurand.so.10 on this machine: using the bundle's stub (nerpos draws no random numbers on the GPU)" >&2
elif [[ -n $missing ]]; then
  echo "warning: the binaries miss $(tr '\n' ' ' <<<"$missing")(see bin/cuda-env.sh; NERPOS_CUDA_LIBS=DIR adds a folder)" >&2
fi
# Seconds left for steps (15 s kept for the table).
left() { echo $((budget - (SECONDS - started) - 15)); }
record() { "$python" "$here/gpu-table.py" --record "$results" "$@"; }
table() { "$python" "$here/gpu-table.py" "$results" "$out/table.md" >/dev/null 2>&1; }

# run NAME CAP MIN CMD...: runs a step under a timeout of CAP seconds or what is left, whichever is
# smaller — skipped when under MIN seconds are left; keeps its log, appends its JSON lines (tagged with
# the step) to the results, and rewrites the table. Returns the step's exit status.
run() {
  local name=$1 cap=$2 min=$3; shift 3
  local l limit rc t0=$SECONDS log=$out/logs/$name.log
  l=$(left)
  if (( l < min )); then
    echo "== $name: skipped ($l s left, needs $min)" >&2
    record skipped "$name" "budget: $l s left, the step needs at least $min s"
    table
    return 99
  fi
  limit=$(( cap < l ? cap : l ))
  echo "== $name (timeout $limit s)" >&2
  timeout -k 10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  [[ ${no_results:-0} == 1 ]] || record lines "$name" "$log"
  if [[ $rc -ne 0 ]]; then
    failures=$((failures + 1))
    record failed "$name" "$log" "$rc" "$((SECONDS - t0))" "$limit"
    echo "   FAILED (exit $rc after $((SECONDS - t0)) s): $(grep -m1 -E '^(Error|error|========= Error)' "$log" || tail -1 "$log")" >&2
  else
    echo "   ok ($((SECONDS - t0)) s)" >&2
  fi
  table
  return $rc
}

gb=$bin/nerpos-gpu-bench
# The libraries the binaries' wrappers find, for tools that run a .bin directly (sanitizer, ncu).
libs=$(source "$bin/cuda-env.sh" && echo "${LD_LIBRARY_PATH:-}")
speed() { # NAME CAP SHAPE PRECISION BATCH-ARGS... [--gpu-kernels] [--profile]
  local name=$1 cap=$2 shape=$3 p=$4; shift 4
  run "$name" "$cap" 30 "$gb" speed --data "$data" --shape "$shape" --precision "$p" --steps 10 --warmup 3 \
    ${peak:+--peak-tflops $peak} "$@"
}
torch_speed() { # NAME SHAPE BATCHES
  [[ $torch == 1 && -f $3 ]] || return 0
  # PyTorch at its best (the row to beat) beside its run on our padded batches: HF's length grouping,
  # then compiled, then padding-free where flash-attn is installed (else a skipped line says so).
  run "$1" 300 60 "$python" "$bench/gpu_torch.py" --batches "$3" --shape "$2" --warmup 3 \
    --runs "${NERPOS_TORCH_RUNS:-bf16:grouped,bf16,bf16:grouped:compile,bf16:grouped:flat}" \
    --device "${NERPOS_CHECK_DEVICE:-cuda}"
}

# 1. Every kernel against the CPU, each launch waited for: a fault is reported at its own launch.
want kernels && CUDA_LAUNCH_BLOCKING=1 run kernels 120 20 "$gb" kernels

if want sanitizer; then
  # The machine's own compute-sanitizer (the CUDA toolkit's: PyPI's lacks the launcher it needs).
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
    /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
  if [[ -n $cs && -x $cs ]]; then
    # The binary itself under the sanitizer, its libraries found as its wrapper finds them: run
    # through the wrapper, the sanitizer took the wrapper's helper processes for the application
    # and stopped ("terminated before first instrumented API call", the 2026-12-04 visit).
    for tool in memcheck racecheck; do
      no_results=1 LD_LIBRARY_PATH=$libs run "sanitizer-$tool" 90 40 "$cs" --tool "$tool" \
        --target-processes all --error-exitcode 3 "$gb.bin" kernels --small
      record sanitizer "sanitizer-$tool" "$out/logs/sanitizer-$tool.log"
    done
  else
    record skipped sanitizer "no compute-sanitizer on this machine (the CUDA toolkit's)"
  fi
fi

# 2. Training on the GPU against the CPU, without and with the fused kernels.
if want correctness; then
  run correctness 150 40 "$gb" correctness --data "$data" --steps 30 --batch 16
  run correctness-kernels 150 40 "$gb" correctness --data "$data" --steps 30 --batch 16 --gpu-kernels
fi

# 2b. A diverging step on the GPU: left out without a per-step read-back (bf16, fused kernels).
want nonfinite && run nonfinite 90 20 "$gb" nonfinite --data "$data" --gpu-kernels

# 3 and 4. Speed: ours without and with the kernels, then PyTorch AMP on the same batches.
for s in base minilm; do
  want $s || continue
  if [[ $s == base ]]; then args=(--batch 0 --batch-tokens 16384); else args=(--batch 32 --grouped); fi
  batches=$out/logs/batches-$s.jsonl
  speed "$s-bf16" 120 $s bf16 "${args[@]}" --dump-batches "$batches"
  speed "$s-bf16-kernels" 120 $s bf16 "${args[@]}" --gpu-kernels
  # The same step with its gradients summed over a world-1 NCCL communicator (queued during backward,
  # one wait), and that sum timed alone: the extra step time against it is the exposed share.
  [[ $s == base ]] && want nccl && speed "$s-bf16-kernels-nccl" 120 $s bf16 "${args[@]}" --gpu-kernels --nccl
  torch_speed "$s-torch-bf16" $s "$batches"
  rm -f "$batches"
done

# 5. Where the time goes, phase by phase (synchronised: slower than the speed steps).
if want profile; then
  speed profile-minilm 90 minilm bf16 --batch 32 --grouped --gpu-kernels --profile
  speed profile-base 90 base bf16 --batch 0 --batch-tokens 16384 --gpu-kernels --profile
fi

# 5b. Which kernels a BERT-base step's GPU time goes to: Nsight Compute's duration of every launch
# (clocks left alone), where the machine has ncu. The sums cover the run's two steps (warm-up and one
# timed) and its set-up, divided by two.
if want kernel-times; then
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  if [[ -n $ncu && -x $ncu ]]; then
    no_results=1 LD_LIBRARY_PATH=$libs run kernel-times 120 40 "$ncu" --clock-control none \
      --metrics gpu__time_duration.sum --csv --log-file "$out/logs/kernel-times.csv" --target-processes all \
      "$gb.bin" speed --data "$data" --shape base --precision bf16 --batch 0 --batch-tokens 16384 \
      --steps 1 --warmup 1 --gpu-kernels
    record kernel-times kernel-times "$out/logs/kernel-times.csv" 2
  else
    record skipped kernel-times "no ncu (Nsight Compute) on this machine"
  fi
fi

if want nccl; then
  run nccl 60 20 "$bin/nerpos-dist-check" --spawn 1 --device cuda check
fi

# 6. A whole GMB job, ours then PyTorch's, from the same weights.
if want train; then
  work=${TMPDIR:-/tmp}/nerpos-gpu-train
  rm -rf "$work" && mkdir -p "$work"
  start=$model
  if [[ ! -f $model/model.safetensors ]]; then
    # A bundle carries the checkpoint's configuration and tokenizer, not its 45 MB of weights: both
    # trainers start from the same seeded random draw (the speed target does not depend on the start).
    start=$work/start
    no_results=1 run train-start 60 20 "$python" "$reference/random_checkpoint.py" "$model" "$start"
  fi
  cat >"$out/logs/train-nerpos.toml" <<TOML
data = "$data"
model = "$start"
out = "$work/nerpos"
device = "${NERPOS_CHECK_DEVICE:-cuda}"
precision = "bf16"
gpu_kernels = true
batch_size = 32
epochs = $epochs
train_sentences = $train_sentences
lr = 1e-4
warmup_ratio = 0.1
weight_decay = 0.01
max_grad_norm = 1.0
dropout = 0.2
seed = 42
TOML
  [[ -f $start/model.safetensors ]] &&
    no_results=1 run train-nerpos 150 60 "$bin/nerpos-train" --config "$out/logs/train-nerpos.toml" &&
    record train-nerpos train-nerpos "$work/nerpos" "$epochs"
  # 6b. Tagging with that job's model (it has a POS tagger): the dev split as CoNLL with gold POS (F1)
  # and as raw text (words/s, POS from the tagger), in f32 and bf16 (target: |ΔF1| ≤ 0.002).
  if [[ -x $bin/nerpos-predict && -f $texts/dev.conll && -d $work/nerpos/best ]]; then
    for p in f32 bf16; do
      tag() { # NAME INPUT FORMAT ARGS...
        local name=$1 input=$2 format=$3; shift 3
        no_results=1 NERPOS_LOG=info run "$name" 60 15 "$bin/nerpos-predict" --model "$work/nerpos/best" \
          --input "$texts/$input" --format "$format" --device "${NERPOS_CHECK_DEVICE:-cuda}" --precision "$p" \
          --out "$work/$name.jsonl" --output-format jsonl "$@"
      }
      tag "predict-gold-$p" dev.conll conll --pos-col 1 --tag-col 2 --pos input &&
        record predict "predict-gold-$p" "$out/logs/predict-gold-$p.log" "$p" "gold tokens + POS"
      tag "predict-text-$p" dev.txt text &&
        record predict "predict-text-$p" "$out/logs/predict-text-$p.log" "$p" "raw text"
    done
  fi
  if [[ $torch == 1 && -f $start/model.safetensors ]]; then
    # seqeval (the reference's scorer) is not in GPU images: the bundle carries its wheel.
    if ! "$python" -c 'import seqeval' 2>/dev/null && compgen -G "$here/wheels/*.whl" >/dev/null; then
      "$python" -m pip install -q --no-index --no-deps --target "$work/site" "$here"/wheels/*.whl &&
        export PYTHONPATH=$work/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    no_results=1 run train-torch 300 60 "$python" "$reference/train_reference.py" --data "$data" --model "$start" \
      --batch-size 32 --epochs "$epochs" --train-sentences "$train_sentences" --lr 1e-4 \
      --device "${NERPOS_CHECK_DEVICE:-cuda}" --precision bf16 --threads 8 &&
      record train-torch train-torch "$out/logs/train-torch.log" "$epochs"
  fi
  rm -rf "$work"
fi

# 7. Grid points per hour when K small-model points share the GPU (each its own process).
if want grid && [[ -x $bin/nerpos-launch ]]; then
  for k in 1 2 4; do
    work=${TMPDIR:-/tmp}/nerpos-gpu-grid-$k
    rm -rf "$work" && mkdir -p "$work"
    start=$model
    [[ -f $model/model.safetensors ]] || start=${TMPDIR:-/tmp}/nerpos-gpu-grid-start
    if [[ ! -f $start/model.safetensors ]]; then
      no_results=1 run grid-start 60 20 "$python" "$reference/random_checkpoint.py" "$model" "$start" || break
    fi
    cat >"$work/grid.toml" <<TOML
data = "$data"
model = "$start"
out = "$work/sweep"
precision = "bf16"
gpu_kernels = true
batch_size = 32
epochs = 1
train_sentences = $grid_sentences
eval_sentences = 1000
lr = 1e-4
warmup_ratio = 0.1
seed = 42
[grid]
lr = [5e-5, 1e-4, 2e-4, 3e-4]
TOML
    trainer=$bin/nerpos-train
    if [[ ${NERPOS_CHECK_DEVICE:-cuda} == cpu ]]; then
      # The CPU stand-in: the launcher gives GPU slots device=cuda; the trainer is told cpu after it.
      trainer=$work/train-on-cpu
      printf '#!/usr/bin/env bash\nexec "%s" "$@" --set device=cpu\n' "$bin/nerpos-train" >"$trainer"
      chmod +x "$trainer"
    fi
    t0=$SECONDS
    no_results=1 NERPOS_TRAIN=$trainer run "grid-k$k" 150 40 "$bin/nerpos-launch" grid \
      --config "$work/grid.toml" --gpus 1 --runs-per-gpu "$k" &&
      record grid "grid-k$k" "$k" 4 "$((SECONDS - t0))" "$grid_sentences"
    rm -rf "$work"
  done
fi

"$python" "$here/gpu-table.py" "$results" "$out/table.md"
echo "check took $((SECONDS - started)) s of its $budget s budget" >&2
if [[ $failures -gt 0 ]]; then
  echo "$failures step(s) failed: see $out/logs" >&2
  exit 1
fi
grep -q '"pass": false' "$results" && { echo "a check failed: see $out/table.md" >&2; exit 1; }
exit 0
