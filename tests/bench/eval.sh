#!/usr/bin/env bash
# Benchmark nerpos-eval against seqeval on 1,000,000 tokens. Usage: tests/bench/eval.sh [RUNS]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
cargo build --release -j2 -p nerpos-eval >&2
python=$(tests/reference/setup-venv.sh requirements-eval.txt)
"$python" tests/bench/eval_bench.py --nerpos-eval target/release/nerpos-eval --runs "${1:-3}"
