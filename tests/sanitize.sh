#!/usr/bin/env bash
# The CUDA kernels' emulator tests (nerpos-kernels) under the address and the thread sanitizer: the
# kernels built for the emulator with -fsanitize=address (reads and writes past a buffer or past the
# shared memory a launch asked for) and with -fsanitize=thread (races between a block's threads), the
# test binary run with the sanitizer's runtime preloaded. A report fails the run.
# Usage: tests/sanitize.sh [address|thread ...]   (default: both); NERPOS_SANITIZE_FILTER=NAME runs
# the tests whose name holds NAME.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cxx=${CXX:-g++}
bin=$(cargo test -p nerpos-kernels --lib -j2 --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "nerpos_kernels" and m.get("executable"):
        print(m["executable"])')
[[ -x $bin ]] || { echo "error: no nerpos-kernels test binary" >&2; exit 1; }
for s in "${@:-address thread}"; do
  for kind in $s; do
    case $kind in
      address) runtime=$("$cxx" -print-file-name=libasan.so) ;;
      thread) runtime=$("$cxx" -print-file-name=libtsan.so) ;;
      *) echo "error: unknown sanitizer $kind (address or thread)" >&2; exit 2 ;;
    esac
    [[ -f $runtime ]] || { echo "error: $cxx has no $kind sanitizer runtime ($runtime)" >&2; exit 1; }
    echo "== emulator tests under the $kind sanitizer"
    # Every test of the crate. Only the emulator is instrumented: the Rust harness's own memory
    # traffic (seen through the sanitizers' interceptors) is not ours — its leaks are not checked
    # and its interceptor calls are ignored by the thread sanitizer.
    NERPOS_EMU_SANITIZE=$kind LD_PRELOAD=$runtime ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 \
      TSAN_OPTIONS=halt_on_error=1:report_signal_unsafe=0:ignore_noninstrumented_modules=1 \
      "$bin" --test-threads 1 ${NERPOS_SANITIZE_FILTER:-}
  done
done
