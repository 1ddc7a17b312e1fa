#!/usr/bin/env bash
# The sparse perplexity grid on the GPU machine in one call (issue 13 items 3 and 5): the CUDA
# runner's perplexity under each method, every position through the method (the CPU's
# MethodEverywhere), on eval.txt in 12 windows of 2048 tokens, 4 sinks + 16 window, batch 12:
#   dense; saap and kmeans (C = 256, pre-RoPE) at lookup 0.02 / 0.05 / 0.10 / 0.20; quest at the same
#   fractions and at budget_tokens 512 / 1024; partition-oracle and loki (k_f = the fraction,
#   d_f = 0.25) at 0.05 / 0.10.
# The CPU runner's figures on the same windows (README): dense 23.21; saap 41.81 / 32.81 / 28.30 /
# 25.20; kmeans 42.41 / 33.67 / 28.79 / 25.39; quest 44.11 / 34.49 / 29.33 (2 / 5 / 10%).
#
# Usage: SAAP_MODEL_PATH=/tmp/pieces/model.gguf scripts/gpu_grid.sh [eval.txt] [artifact dir]
#   (defaults: /tmp/pieces/eval.txt and /tmp/pieces, which hold saap-c256-pre.safetensors,
#   kmeans-c256-pre.safetensors, loki-pre.safetensors). SAAP_SKIP_BUILD=1 uses build-cuda as it is.
# Each run writes $OUT/grid_<method>_<budget>.json (gpu_ppl --json: result and provenance) and its
# log; $OUT/grid_summary.csv has the run's provenance lines, then one line per run:
# method,budget,perplexity,kv_fraction,seconds.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
text=${1:-/tmp/pieces/eval.txt}
art=${2:-/tmp/pieces}
: "${SAAP_MODEL_PATH:?set SAAP_MODEL_PATH to the GGUF}"
if [[ ${SAAP_SKIP_BUILD:-0} != 1 ]]; then
  if ! { cmake --preset cuda-only && cmake --build build-cuda -j"$(nproc)" --target gpu_ppl; } > "$OUT/grid_build.log" 2>&1; then
    tail -40 "$OUT/grid_build.log"
    exit 1
  fi
fi
status=0
common=(--text "$text" --window-len 2048 --max-windows 12 --batch 12)
# The summary starts with the run's provenance lines (scripts/provenance.py; the JSONs carry their own).
{
  python3 scripts/provenance.py lines --command "$0 $*" --input "model=$SAAP_MODEL_PATH" --input "text=$text" \
    --input "artifact=$art/saap-c256-pre.safetensors" --input "artifact=$art/kmeans-c256-pre.safetensors" \
    --input "artifact=$art/loki-pre.safetensors"
  echo "method,budget,perplexity,kv_fraction,seconds"
} > "$OUT/grid_summary.csv"
run() {  # run NAME BUDGET ARGS...
  local name=$1 budget=$2
  shift 2
  local tag="grid_${name}_${budget}"
  if timeout 240 build-cuda/bench/gpu_ppl "${common[@]}" --method "$name" "$@" --json "$OUT/$tag.json" \
      > "$OUT/$tag.log" 2>&1; then
    local line
    line=$(grep '^perplexity' "$OUT/$tag.log")
    echo "$name $budget: $line"
    python3 - "$OUT/$tag.json" "$name" "$budget" >> "$OUT/grid_summary.csv" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]},{sys.argv[3]},{r['perplexity']:.4f},{r['kv_fraction']:.5f},{r['seconds']:.1f}")
PY
  else
    echo "$name $budget: FAILED (see $OUT/$tag.log)"
    tail -5 "$OUT/$tag.log"
    status=1
  fi
}
fixed=(--sinks 4 --window 16)
run dense all
for f in 0.02 0.05 0.10 0.20; do
  run saap "$f" --artifact "$art/saap-c256-pre.safetensors" --lookup "$f" "${fixed[@]}"
  run kmeans "$f" --artifact "$art/kmeans-c256-pre.safetensors" --lookup "$f" "${fixed[@]}"
done
for f in 0.02 0.05 0.10 0.20; do run quest "$f" --lookup "$f" "${fixed[@]}"; done
for b in 512 1024; do run quest "b$b" --budget-tokens "$b" "${fixed[@]}"; done
for f in 0.05 0.10; do
  run partition-oracle "$f" --artifact "$art/kmeans-c256-pre.safetensors" --lookup "$f" "${fixed[@]}"
  run loki "$f" --artifact "$art/loki-pre.safetensors" --k-f "$f" --d-f 0.25
done
grep -v '^#' "$OUT/grid_summary.csv" | column -s, -t 2>/dev/null || cat "$OUT/grid_summary.csv"
exit $status
