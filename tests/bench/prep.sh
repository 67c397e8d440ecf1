#!/usr/bin/env bash
# Benchmark nerpos-prep against the Python reference on the full GMB corpus with the MiniLM tokenizer.
# Usage: tests/bench/prep.sh [RUNS]   (needs ../shared/data/ner_dataset.csv or data/ner_dataset.csv)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
csv=${NERPOS_GMB_CSV:-}
for c in data/ner_dataset.csv ../shared/data/ner_dataset.csv; do
  [[ -z $csv && -f $c ]] && csv=$c
done
[[ -n $csv ]] || { echo "no GMB corpus (data/ner_dataset.csv or ../shared/data/ner_dataset.csv)" >&2; exit 1; }
data/fetch-minilm.sh >&2
cargo build --release -j2 -p nerpos-prep >&2
python=$(tests/reference/setup-venv.sh)
"$python" tests/bench/prep_bench.py --nerpos-prep target/release/nerpos-prep --input "$csv" \
  --tokenizer data/models/all-MiniLM-L6-v2 --runs "${1:-3}"
