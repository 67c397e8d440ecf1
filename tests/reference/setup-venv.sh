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
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${reqs[@]}" >&2
echo "$venv/bin/python"
