#!/usr/bin/env bash
# Gemma-3-270M on the CUDA model runner (issue 14 on the GPU), in one call on the GPU machine:
#   SAAP_GEMMA_PATH=/tmp/pieces/gemma.gguf scripts/gpu_gemma.sh [all|kernels|model|ppl|sparse] [eval.txt]
#   kernels  the float64 kernel tests at head_dim 256 and with the sliding window: dense decode and
#            prefill attention (SAAP_REQUIRE_GPU=1: a skip is a failure)
#   model    the GPU Gemma logits vs the CPU runner's (tests/model/data/cuda_reference_gemma3.txt)
#   ppl      dense perplexity of eval.txt (BOS + text windows) at 2k (12 windows; CPU runner: 22.69),
#            8k (24 windows) and 32k (6 windows), one JSON each with provenance
#   sparse   (not part of all: a call of its own) perplexity under Saap and symmetric k-means,
#            C = 1024, 5% of each prefix + 4 sinks + 64 recent, on the global layers, at 8k (24 windows)
#            and 32k (6 windows), beside the dense runs of ppl; the artifacts of
#            scripts/gemma_longctx_train.sh in $GEMMA_ART (default /tmp/gemma_art)
# Every mode builds first (cuda-only preset, only these targets). Logs and JSON go to $OUT
# (default ./gpu_out): gemma_*.log, gemma_ppl_w<window>.json.
# Defaults: SAAP_GEMMA_PATH=/tmp/pieces/gemma.gguf, text /tmp/pieces/eval.txt.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
mode=${1:-all}
text=${2:-/tmp/pieces/eval.txt}
model=${SAAP_GEMMA_PATH:-/tmp/pieces/gemma.gguf}
status=0
if ! git rev-parse HEAD >/dev/null 2>&1 && [ -z "${SAAP_GIT_COMMIT:-}" ]; then
  echo "warning: no git checkout and no SAAP_GIT_COMMIT: every result will record commit 'unknown'"
fi
if ! { cmake --preset cuda-only &&
       cmake --build build-cuda -j"$(nproc)" --target cuda_test_dense_decode cuda_test_prefill_attention; } \
     > "$OUT/gemma_build.log" 2>&1; then
  tail -60 "$OUT/gemma_build.log"
  exit 1
fi
# The model's targets apart: a failure there still lets the kernel tests run.
model_built=1
if ! cmake --build build-cuda -j"$(nproc)" --target cuda_test_cuda_gemma3 gpu_ppl >> "$OUT/gemma_build.log" 2>&1; then
  tail -40 "$OUT/gemma_build.log"
  echo "the model's targets did not build: model and ppl modes skipped"
  model_built=0
  status=1
fi
echo "build ok"
export SAAP_REQUIRE_GPU=1
if [[ $mode == all || $mode == kernels ]]; then
  for t in cuda_test_dense_decode cuda_test_prefill_attention; do
    timeout 300 "build-cuda/tests/$t" > "$OUT/gemma_$t.log" 2>&1 || { echo "$t failed"; status=1; }
    grep -E "^FAIL|seed=|passed, .* failed" "$OUT/gemma_$t.log"
  done
fi
if [[ $model_built == 1 && ( $mode == all || $mode == model ) ]]; then
  SAAP_GEMMA_PATH=$model timeout 300 build-cuda/tests/cuda_test_cuda_gemma3 2>&1 | tee "$OUT/gemma_model_test.log" ||
    status=1
fi
if [[ $model_built == 1 && ( $mode == all || $mode == ppl ) ]]; then
  # window, windows, batch: 2k x 12 is the CPU runner's table; eval.txt holds 207,829 Gemma tokens,
  # so 6 windows of 32k.
  # The evaluation window's option: --window-len once gpu_ppl also runs sparse methods (whose
  # recent window is --window), --window before.
  wflag=--window
  grep -q '"--window-len"' bench/cuda/gpu_ppl.cu && wflag=--window-len
  for spec in "2048 12 12" "8192 24 8" "32768 6 2"; do
    read -r window windows batch <<< "$spec"
    timeout 540 build-cuda/bench/gpu_ppl --model "$model" --text "$text" "$wflag" "$window" \
      --max-windows "$windows" --batch "$batch" --attention tc --json "$OUT/gemma_ppl_w$window.json" 2>&1 |
      tee "$OUT/gemma_ppl_w$window.log" || status=1
  done
fi
if [[ $model_built == 1 && $mode == sparse ]]; then
  art=${GEMMA_ART:-/tmp/gemma_art}
  wflag=--window
  grep -q '"--window-len"' bench/cuda/gpu_ppl.cu && wflag=--window-len
  for method in saap kmeans; do
    artifact=$art/gemma3-calib-3x16k-$method-c1024.safetensors
    if [[ ! -f $artifact ]]; then
      echo "no $artifact: $method skipped"
      status=1
      continue
    fi
    for spec in "8192 24 8" "32768 6 2"; do
      read -r window windows batch <<< "$spec"
      timeout 540 build-cuda/bench/gpu_ppl --model "$model" --text "$text" "$wflag" "$window" \
        --max-windows "$windows" --batch "$batch" --attention tc --method "$method" --artifact "$artifact" \
        --lookup 0.05 --sinks 4 --window 64 --json "$OUT/gemma_ppl_${method}5_w$window.json" 2>&1 |
        tee "$OUT/gemma_ppl_${method}5_w$window.log" || status=1
    done
  done
fi
exit $status
