#!/usr/bin/env bash
# Packs the GPU check into one folder that travels to a GPU machine without network (< 60 MB):
# the CUDA binaries (stripped, xz), the check and its table, the PyTorch references, seqeval's wheel,
# a prepared dataset, and the checkpoint's
# configuration and tokenizer (its weights do not fit beside the rest: the train step starts both
# trainers from the same seeded random draw).
# Called by `launch/gpu-check.sh --bundle DIR`; usage: gpu-bundle.sh DIR BIN DATA MODEL
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
bundle=$1 bin=$2 data=$3 model=$4
python=${PYTHON:-python3}
[[ -x $root/.venv-ref/bin/python ]] && python=$root/.venv-ref/bin/python
fail() { rm -rf "${tmp:-}"; echo "error: $*" >&2; exit 1; }

command -v xz >/dev/null || fail "packing needs xz (apt-get install xz-utils)"
[[ -f $data/manifest.json ]] || fail "no prepared dataset at $data (launch/prepare-gmb.sh prepares one, or --data DIR)"
[[ -f $model/config.json ]] || fail "no checkpoint at $model (data/fetch-minilm.sh, or --model DIR)"
tmp="$bundle.tmp.$$"
rm -rf "$tmp" && mkdir -p "$tmp"/{bin,bench,reference,data/gmb,model,wheels}

for b in nerpos-gpu-bench nerpos-dist-check nerpos-train nerpos-predict; do
  [[ -x $bin/$b.bin ]] || fail "no $bin/$b.bin: run launch/build-cuda.sh first (or --bin DIR)"
  # Stripped and compressed: candle's PTX makes each binary 40-55 MB, 4-7 MB compressed.
  strip -o "$tmp/bin/$b.bin" "$bin/$b.bin" 2>/dev/null || cp "$bin/$b.bin" "$tmp/bin/$b.bin"
  xz -T0 -6 "$tmp/bin/$b.bin"
  cp "$bin/$b" "$tmp/bin/$b"
done
cp "$bin/cuda-env.sh" "$tmp/bin/"
# The launcher (a CPU binary: it starts the CUDA trainer) for the grid step.
launcher=${NERPOS_LAUNCH:-$root/target/release/nerpos-launch}
[[ -x $launcher ]] || (cd "$root" && cargo build --release -j2 --bin nerpos-launch) || fail "could not build nerpos-launch"
strip -o "$tmp/bin/nerpos-launch" "$launcher" 2>/dev/null || cp "$launcher" "$tmp/bin/nerpos-launch"
# A stub cuRAND for machines without one (gpu-check.sh uses it only then): the binaries link it
# through candle but nerpos never calls it; every function returns an error status.
mkdir -p "$tmp/bin/stubs"
nm -D --undefined-only "$bin"/nerpos-{gpu-bench,dist-check,train}.bin | awk '$2 ~ /^curand/ {print $2}' |
  sed 's/@.*//' | sort -u | awk '{print "int " $1 "(void) { return 999; }"}' >"$tmp/bin/stubs/curand.c"
[[ -s $tmp/bin/stubs/curand.c ]] || fail "found no cuRAND functions in the binaries (nm)"
# The binaries ask for the symbols at version libcurand.so.10: the stub defines it.
echo 'libcurand.so.10 { global: *; };' >"$tmp/bin/stubs/curand.map"
cc -shared -fPIC -Wl,-soname,libcurand.so.10 -Wl,--version-script="$tmp/bin/stubs/curand.map" \
  -o "$tmp/bin/stubs/libcurand.so.10" "$tmp/bin/stubs/curand.c"
rm "$tmp/bin/stubs/curand.c" "$tmp/bin/stubs/curand.map"
cp "$here/gpu-check.sh" "$here/gpu-table.py" "$tmp/"
cp "$root/tests/bench/gpu_torch.py" "$tmp/bench/"
cp "$root/tests/reference/"{train_reference.py,model_reference.py,random_checkpoint.py} "$tmp/reference/"
cp "$model"/*.json "$tmp/model/"
cp "$model"/*.txt "$tmp/model/" 2>/dev/null || true
cp -r "$data"/. "$tmp/data/gmb/"
# The dev split as CoNLL (gold POS) and as running text, for the predict step.
"$python" "$root/tests/bench/text_bench.py" --export "$tmp/data/text" --dataset "$data" >/dev/null ||
  fail "could not render the dev split of $data (tests/bench/text_bench.py --export; pyarrow)"
# seqeval (the reference's scorer) is not in GPU images; PyPI has it as a source archive only.
"$python" -m pip wheel -q --no-deps -w "$tmp/wheels" seqeval==1.2.2 || fail "could not build a seqeval wheel"

# compute-sanitizer is not bundled: PyPI's nvidia-cuda-sanitizer-api lacks the launcher the tool
# starts its target with (TreeLauncherSubreaper: every target "terminated before first instrumented API
# call", 2026-12-04); the check uses the GPU machine's own, which matches its driver.

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$root" status --porcelain 2>/dev/null | grep -qv '^??' && echo true || echo false)
echo "{\"commit\": \"$commit\", \"uncommitted_changes\": $dirty, \"packed\": \"$(date -u +%FT%TZ)\"}" >"$tmp/bundle.json"
rm -rf "$bundle" && mv "$tmp" "$bundle"
size=$(du -sm "$bundle" | cut -f1)
echo "bundle: $bundle ($size MB, commit $commit); on the GPU machine: $bundle/gpu-check.sh --budget SECONDS --out DIR"
[[ $size -lt 60 ]] || { echo "error: the bundle is $size MB, over the 60 MB budget" >&2; exit 1; }
