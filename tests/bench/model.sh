#!/usr/bin/env bash
# Benchmark nerpos-model's training step against PyTorch on this machine (see model_bench.py).
# Usage: tests/bench/model.sh [ROUNDS]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
data/fetch-minilm.sh >&2
cargo build --release -j2 -p nerpos-model --example fwd_bwd >&2
python=$(tests/reference/setup-venv.sh requirements-model.txt)
"$python" tests/bench/model_bench.py --ours target/release/examples/fwd_bwd \
  --checkpoint data/models/all-MiniLM-L6-v2 --rounds "${1:-3}"
