#!/usr/bin/env bash
# Copies the header-only dependencies the GPU machine lacks (nlohmann-json, CLI11) into
# .gpu-deps/include, where `cmake --preset cuda-only` finds them (CLI11 lets it build the saap CLI). Run it here (where scripts/setup.sh installed them)
# and carry .gpu-deps to the GPU machine with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.gpu-deps/include
rm -rf .gpu-deps
mkdir -p "$dest"
for header in nlohmann/json.hpp CLI/CLI.hpp; do
  dir=${header%%/*}
  [[ -f /usr/include/$header ]] || { echo "gpu_deps: /usr/include/$header is missing (run scripts/setup.sh)" >&2; exit 1; }
  cp -r "/usr/include/$dir" "$dest/"
done
echo "gpu_deps: $(du -sh .gpu-deps | cut -f1) in .gpu-deps/include ($(ls "$dest" | tr '\n' ' '))"
