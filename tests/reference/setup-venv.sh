#!/usr/bin/env bash
# Creates (or updates) the reference Python environment .venv-ref/ at the repository root from
# tests/reference/requirements*.txt and prints its python's path. Usage: setup-venv.sh [EXTRA_REQS...]
# NERPOS_REFERENCE_VENV=DIR keeps the environment in DIR instead (CI: a cache outside the clone, so
# that each fresh clone neither downloads nor stores PyTorch's 6 GB again) and makes .venv-ref, where
# the tests look, a link to it; a real .venv-ref folder already there is left as it is.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=$root/.venv-ref
if [[ -n ${NERPOS_REFERENCE_VENV:-} && ! -d $venv ]]; then
  mkdir -p "$NERPOS_REFERENCE_VENV"
  venv=$(cd "$NERPOS_REFERENCE_VENV" && pwd)
  ln -sfn "$venv" "$root/.venv-ref"
fi
python=${PYTHON:-python3}
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv" >&2
reqs=(-r "$root/tests/reference/requirements.txt")
for extra in "$@"; do reqs+=(-r "$root/tests/reference/$extra"); done
# No wheel cache: PyTorch's CUDA wheels are ~4 GB installed, and disk is what a CI machine runs out of
# first (a second copy in ~/.cache/pip would only be read by another fresh environment).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir "${reqs[@]}" >&2
echo "$venv/bin/python"
