#!/usr/bin/env bash
# Regenerates the seqeval fixture of nerpos-eval's tests (committed; CI needs no Python).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=$("$root/tests/reference/setup-venv.sh" requirements-eval.txt)
"$python" "$root/tests/reference/eval_fixture.py" "$root/crates/nerpos-eval/tests/fixtures/seqeval_cases.json"
