#!/usr/bin/env bash
# Sets up a fresh machine, builds the CLI, and runs the main job on the bundled default model:
# a chat answer, quality at one budget on a window of prose, and a passkey retrieval (dense vs
# Saap vs k-means, with the bytes each read). About 3 minutes on 2 cores once built, plus the
# first run's calibration and training (cached in $SAAP_CACHE/demo, default ~/.cache/saap/demo).
# Arguments go to `saap demo` (see `build/saap demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Only the CLI: the tests and benchmarks are scripts/test.sh's to build.
cmake --preset default >/dev/null
cmake --build --preset default -j"$(nproc)" --target saap
./build/saap demo "$@"
