#!/usr/bin/env bash
# The CUDA model runner on the GPU machine (issue 13 item 3), in one call or in steps:
#   SAAP_MODEL_PATH=/tmp/pieces/model.gguf scripts/gpu_runner.sh [all|test|bench|hf|grid] [eval.txt]
#   build  cuda-only preset, the runner's targets only (every mode builds first)
#   test   the prefill attention test and the model test vs the CPU runner's logits (SAAP_REQUIRE_GPU=1),
#          then the 8192-token eval.txt window vs the CPU runner (top-1, NLL, perplexity), and, given
#          eval.txt, the dense perplexity over 12 x 2048 windows (the CPU runner's: 23.21); the sparse
#          decode test (tests/kernels/cuda/test_cuda_sparse.cu: bad input, Saap selections vs the CPU
#          method on the runner's activations, every GPU method inside the graph) and Saap 5% perplexity
#          (the CPU's: 32.81), with the artifacts in $SAAP_ARTIFACTS (default /tmp/pieces)
#   grid   scripts/gpu_grid.sh: dense, saap, kmeans, quest, partition-oracle, loki perplexity grid
#   bench  e2e_bench: prefill ms and decode tokens/s, prompts 2048/8000, batch 1/16 (+ CSV), and the
#          prefill's GPU time by phase (--phases: GEMMs by kind, norms, RoPE, attention, last logits)
#   hf     HF transformers generate on the same GPU, GGUF and prompts (needs torch, transformers, gguf)
# Logs and CSVs go to $OUT (default ./gpu_out): runner_*.log, gpu_e2e_saap.csv, gpu_e2e_hf.csv.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
mode=${1:-all}
text=${2:-}
: "${SAAP_MODEL_PATH:?set SAAP_MODEL_PATH to the GGUF}"
status=0
if ! { cmake --preset cuda-only && cmake --build build-cuda -j"$(nproc)" --target cuda_test_prefill_attention \
         cuda_test_cuda_llama cuda_test_cuda_sparse e2e_bench gpu_ppl; } > "$OUT/runner_build.log" 2>&1; then
  tail -60 "$OUT/runner_build.log"
  exit 1
fi
echo "build ok"
if [[ $mode == all || $mode == test ]]; then
  export SAAP_REQUIRE_GPU=1
  export SAAP_ARTIFACTS=${SAAP_ARTIFACTS:-/tmp/pieces}
  for t in cuda_test_prefill_attention cuda_test_cuda_llama cuda_test_cuda_sparse; do
    timeout 300 "build-cuda/tests/$t" 2>&1 | tee "$OUT/runner_$t.log" || status=1
  done
  timeout 300 build-cuda/bench/gpu_ppl --reference tests/model/data/cuda_reference_long.txt 2>&1 |
    tee "$OUT/runner_long_window.log" || status=1
  # The previous default prefill kernel (tc; auto runs tcw32 at head_dim 64) on the same window.
  timeout 300 build-cuda/bench/gpu_ppl --reference tests/model/data/cuda_reference_long.txt --attention tc 2>&1 |
    tee "$OUT/runner_long_window_tc.log" || status=1
  if [[ -n $text ]]; then
    timeout 300 build-cuda/bench/gpu_ppl --text "$text" --window-len 2048 --max-windows 12 --batch 12 2>&1 |
      tee "$OUT/runner_ppl.log" || status=1
    timeout 300 build-cuda/bench/gpu_ppl --text "$text" --window-len 2048 --max-windows 12 --batch 12 \
      --method saap --artifact "$SAAP_ARTIFACTS/saap-c256-pre.safetensors" --lookup 0.05 --sinks 4 --window 16 \
      --json "$OUT/gpu_ppl_saap_0.05.json" 2>&1 | tee "$OUT/runner_ppl_saap.log" || status=1
  fi
fi
if [[ $mode == all || $mode == bench ]]; then
  timeout 540 build-cuda/bench/e2e_bench --phases --csv "$OUT/gpu_e2e_saap.csv" 2>&1 | tee "$OUT/runner_e2e.log" || status=1
fi
if [[ $mode == all || $mode == hf ]]; then
  if python3 -c "import torch, transformers, gguf" 2>/dev/null; then
    timeout 540 python3 bench/cuda/hf_e2e.py --out "$OUT/gpu_e2e_hf.csv" 2>&1 | tee "$OUT/runner_hf.log" || status=1
  else
    echo "hf_e2e: torch, transformers or gguf does not import here" | tee "$OUT/runner_hf.log"
    status=1
  fi
fi
if [[ $mode == grid ]]; then
  SAAP_SKIP_BUILD=1 scripts/gpu_grid.sh "${text:-/tmp/pieces/eval.txt}" "${SAAP_ARTIFACTS:-/tmp/pieces}" || status=1
fi
exit $status
