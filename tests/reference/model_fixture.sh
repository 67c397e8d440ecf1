#!/usr/bin/env bash
# Regenerates nerpos-model's committed PyTorch fixture (a tiny random BERT+POS model, a batch, logits,
# loss and gradients): crates/nerpos-model/tests/fixtures/tiny/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=$("$root/tests/reference/setup-venv.sh" requirements-model.txt)
out=$root/crates/nerpos-model/tests/fixtures/tiny
rm -rf "$out"
"$python" "$root/tests/reference/model_reference.py" tiny "$out"
ls -la "$out" "$out/model"
