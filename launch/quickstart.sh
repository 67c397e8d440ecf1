#!/usr/bin/env bash
# The main job on defaults that work out of the box: fetch the MiniLM checkpoint, build nerpos-prep
# (release), and prepare the GMB corpus into datasets/gmb-minilm, then print its summary.
# Usage: launch/quickstart.sh   (the corpus: data/ner_dataset.csv or ../shared/data/ner_dataset.csv)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

csv=${NERPOS_GMB_CSV:-}
for candidate in data/ner_dataset.csv ../shared/data/ner_dataset.csv; do
  [[ -z $csv && -f $candidate ]] && csv=$candidate
done
if [[ -z $csv ]]; then
  cat >&2 <<'MSG'
error: no GMB corpus found. Download "Annotated Corpus for Named Entity Recognition" (ner_dataset.csv)
from Kaggle (abhinavwalia95/entity-annotated-corpus) and put ner_dataset.csv in data/, or set
NERPOS_GMB_CSV=/path/to/ner_dataset.csv. See data/README.md.
MSG
  exit 1
fi

data/fetch-minilm.sh
cargo build --release -j2 -p nerpos-prep
target/release/nerpos-prep --format gmb --input "$csv" --tokenizer data/models/all-MiniLM-L6-v2 \
  --out datasets/gmb-minilm --force
echo
echo "dataset written to datasets/gmb-minilm; inspect it with:"
echo "  target/release/nerpos-prep inspect datasets/gmb-minilm"
