#!/usr/bin/env bash
# Sets up a fresh machine, builds, and runs the whole test suite: the mutation check that proves
# the attention tests can fail, the GGUF parser's fuzzer for a bounded time under ASan/UBSan, and
# last the GoogleTest suites through ctest (CUDA tests report "skipped" where there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
bash scripts/mutation_check.sh
if [ -f tests/fuzz/CMakeLists.txt ]; then
  cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz -j"$(nproc)" --target fuzz_gguf
  bash scripts/run_fuzz.sh "${SAAP_FUZZ_SECONDS:-60}"
fi
ctest --preset default -j"$(nproc)"
