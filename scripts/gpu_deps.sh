#!/usr/bin/env bash
# Copies the header-only dependencies the GPU machine lacks (nlohmann-json) into .gpu-deps/include,
# where `cmake --preset cuda-only` finds them. Run it here (where scripts/setup.sh installed them)
# and carry .gpu-deps to the GPU machine with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.gpu-deps/include
rm -rf .gpu-deps
mkdir -p "$dest"
for dir in nlohmann; do
  [[ -f /usr/include/$dir/json.hpp ]] || { echo "gpu_deps: /usr/include/$dir is missing (run scripts/setup.sh)" >&2; exit 1; }
  cp -r "/usr/include/$dir" "$dest/"
done
echo "gpu_deps: $(du -sh .gpu-deps | cut -f1) in .gpu-deps/include ($(ls "$dest" | tr '\n' ' '))"
