#!/usr/bin/env bash
# Creates (or updates) the reference Python environment .venv-ref/ at the repository root from
# tests/reference/requirements*.txt and prints its python's path. Usage: setup-venv.sh [EXTRA_REQS...]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=$root/.venv-ref
python=${PYTHON:-python3}
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv" >&2
reqs=(-r "$root/tests/reference/requirements.txt")
for extra in "$@"; do reqs+=(-r "$root/tests/reference/$extra"); done
# No wheel cache: PyTorch's CUDA wheels are ~4 GB installed, and disk is what a CI machine runs out of
# first (a second copy in ~/.cache/pip would only be read by another fresh environment).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir "${reqs[@]}" >&2
echo "$venv/bin/python"
