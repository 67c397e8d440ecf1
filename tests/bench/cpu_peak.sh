#!/usr/bin/env bash
# What a bf16 matrix product could gain on this CPU: peak f32 FMA against AVX512-BF16's dot product
# (see cpu_peak.rs). Run on an otherwise idle machine. Usage: tests/bench/cpu_peak.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
rustc --edition 2024 -O "$root/tests/bench/cpu_peak.rs" -o "$out/cpu_peak"
"$out/cpu_peak"
