#!/usr/bin/env bash
# Benchmark tagging raw text (see text_bench.py): entity F1 of raw text against the gold tokens, words/s
# against PyTorch, peak memory. Usage: tests/bench/text.sh MODEL_DIR DATASET_DIR [SPLIT] [REPEAT] [--no-torch] [--no-bf16] [--big-gb GB]
# MODEL_DIR: a fine-tuned folder with a POS tagger (e.g. a run's best/); DATASET_DIR: the dataset it
# was trained on (its SPLIT, dev by default, is rendered as running text).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
cargo build --release -j2 -p nerpos-predict >&2
python=$(tests/reference/setup-venv.sh requirements-model.txt)
"$python" tests/bench/text_bench.py --ours target/release/nerpos-predict --model "$1" \
  --dataset "$2" --split "${3:-dev}" --repeat "${4:-0}" "${@:5}"
