#!/usr/bin/env bash
# Sets up a fresh machine, builds, and runs the whole test suite: the mutation check that proves
# the attention tests can fail, the fuzz targets of every parser (GGUF, safetensors, tokenizer,
# chat template) for a bounded time each under ASan/UBSan (SAAP_FUZZ_SECONDS, default 45, as many
# at once as there are cores), and last the GoogleTest suites through ctest (CUDA tests report
# "skipped" where there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
bash scripts/mutation_check.sh
if [ -f tests/fuzz/CMakeLists.txt ]; then
  cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz -j"$(nproc)" --target fuzz_gguf fuzz_safetensors fuzz_tokenizer fuzz_chat_template
  bash scripts/run_fuzz.sh "${SAAP_FUZZ_SECONDS:-45}"
fi
ctest --preset default -j"$(nproc)"
