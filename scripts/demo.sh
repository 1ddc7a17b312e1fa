#!/usr/bin/env bash
# Sets up a fresh machine, builds, and runs the main job on the bundled default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
./build/saap demo "$@"
