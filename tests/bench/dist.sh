#!/usr/bin/env bash
# Benchmark the CPU (TCP ring) all-reduce with 2 and 4 local processes: bus bandwidth at 1, 25 and
# 256 MB and a MiniLM-sized gradient set in 25 MB buckets. Prints a Markdown table.
# Usage: tests/bench/dist.sh [ITERS]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
cargo build --release -j2 -p nerpos-dist-check >&2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for w in 2 4; do
  target/release/nerpos-dist-check --spawn "$w" bench --iters "${1:-5}" >> "$out"
done
python3 - "$out" <<'PY'
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(f"CPU backend (TCP ring over loopback), {os.cpu_count()} cores; median of the iterations.\n")
print("| processes | buffer | time (ms) | algbw (GB/s) | busbw (GB/s) |")
print("|---:|---|---:|---:|---:|")
for r in rows:
    print(f"| {r['world']} | {r['what']} | {r['seconds'] * 1e3:.1f} | {r['algbw_gb_s']:.2f} | {r['busbw_gb_s']:.2f} |")
PY
