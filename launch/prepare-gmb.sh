#!/usr/bin/env bash
# Prepares the GMB corpus for the default configs: fetches the all-MiniLM-L6-v2 checkpoint (data/models),
# builds nerpos-prep (release) and writes datasets/gmb-minilm (all 17 labels, 80/10/10) or, with
# --design, datasets/gmb-minilm-11 (the design's setup: art, eve, nat → O, 80/20 train/test). Skips the
# work already done (a dataset with a manifest is kept; --force redoes it). launch/train.sh calls it
# when a config needs it.
# NERPOS_PREP=/path/to/nerpos-prep uses that binary instead of building one (launch/train.sh passes the
# one it just built: building nerpos-prep on its own unifies dependency features differently and would
# recompile much of the dependency tree a second time).
# Usage: launch/prepare-gmb.sh [--design] [--force]   (corpus: data/ner_dataset.csv, ../shared/data/ner_dataset.csv,
#        or NERPOS_GMB_CSV=/path/to/ner_dataset.csv)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=datasets/gmb-minilm setup=() force=0
for a in "$@"; do
  case $a in
    --design) out=datasets/gmb-minilm-11 setup=(--drop-types art,eve,nat --split 0.8,0,0.2) ;;
    --force) force=1 ;;
    *) echo "error: unknown argument $a (--design, --force)" >&2; exit 2 ;;
  esac
done

data/fetch-minilm.sh
if [[ $force == 0 && -f $out/manifest.json ]]; then
  echo "dataset present: $out"
  exit 0
fi

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

prep=${NERPOS_PREP:-}
if [[ -z $prep ]]; then
  cargo build --release -j2 -p nerpos-prep
  prep=target/release/nerpos-prep
fi
"$prep" --format gmb --input "$csv" --tokenizer data/models/all-MiniLM-L6-v2 \
  --out "$out" --force "${setup[@]}"
echo "dataset written to $out (inspect: target/release/nerpos-prep inspect $out)"
