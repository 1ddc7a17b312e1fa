#!/usr/bin/env bash
# The saap CLI on the GPU machine (issue 13 item 4): builds it with the cuda-only preset (CUDA,
# CMake, g++ and the header-only deps that scripts/gpu_deps.sh puts in .gpu-deps; no BLAS, no
# FAISS: `saap train` refuses there, artifacts come from the CPU machine) and runs the commands a
# user would, each with --device cuda:
#   scripts/gpu_cli.sh [all|build|test|generate|ppl|passkey|niah|bench|gemma]   (every step builds first)
#   test      cuda_test_cli_device (SAAP_REQUIRE_GPU=1): eval ppl cpu vs cuda (dense; streaming, oracle, saap,
#             kmeans, quest, loki: K/V and index fractions), passkey, generate, bench, bad input
#   generate  a chat answer, streamed, then the same as JSON
#   ppl       perplexity, 12 x 2048 windows of eval.txt: dense (GPU runner: 23.2235; CPU: 23.2122), then
#             saap and kmeans at 5% through the method everywhere (CPU: saap 32.81)
#   passkey   1k/2k/4k/8k tokens, 5 depths x $TRIALS trials: dense, then saap/kmeans (the artifacts) and
#             quest at each of $PASSKEY_BUDGETS (2%, 5%, 10%, 1024 tokens), loki (k_f 0.05, d_f 0.25). A method the GPU
#             runner refuses (exit 7, by name) is recorded and the script goes on.
#   niah      eval niah --task passkey at 1k-8k, dense (the RULER-style harness, same backend)
#   bench     end to end: prompts 2048/8000, batches 1/16, 128 decode steps; dense, saap and quest at 5%
#   gemma     with SAAP_GEMMA_PATH: generate and 12 x 2048 perplexity of Gemma-3 on the GPU (CPU: 22.69)
# Inputs (defaults: the GPU machine's): SAAP_MODEL_PATH=/tmp/pieces/model.gguf,
# SAAP_EVAL_TEXT=/tmp/pieces/eval.txt, PIECES=/tmp/pieces ({saap-c256-pre,kmeans-c256-pre,loki-pre}.safetensors),
# TRIALS=20, PASSKEY_BUDGETS. Results (JSON/CSV with provenance) and logs go to $OUT (default ./gpu_out/cli).
# Pass SAAP_GIT_COMMIT=<sha> SAAP_GIT_DIRTY=0 when the tree has no .git (the results record it).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out/cli}
mkdir -p "$OUT"
mode=${1:-all}
export SAAP_MODEL_PATH=${SAAP_MODEL_PATH:-/tmp/pieces/model.gguf}
export SAAP_EVAL_TEXT=${SAAP_EVAL_TEXT:-/tmp/pieces/eval.txt}
PIECES=${PIECES:-/tmp/pieces}
TRIALS=${TRIALS:-20}
# Issue 10's budgets: 2%, 5% and 10% of the K/V, and a fixed 1024 tokens (';'-separated).
PASSKEY_BUDGETS=${PASSKEY_BUDGETS:-"--lookup 0.02;--lookup 0.05;--lookup 0.1;--budget-tokens 1024"}
model=(--model "$SAAP_MODEL_PATH")
status=0

if ! { cmake --preset cuda-only && cmake --build build-cuda -j"$(nproc)" --target saap cuda_test_cli_device; } \
     > "$OUT/cli_build.log" 2>&1; then
  tail -60 "$OUT/cli_build.log"
  exit 1
fi
echo "build ok"
saap=build-cuda/saap
$saap info | tee "$OUT/cli_info.log"

# Runs one saap command, its stdout (JSON) to $OUT/<name>.json and stderr to <name>.log. With
# REFUSAL_OK=1 (a sparse method) a refusal (exit 7, Unsupported: a setting the GPU runner lacks,
# named) is recorded, not a failure; any other exit, or a refusal of a dense run, fails the script.
run() {
  local name=$1 limit=$2
  shift 2
  echo "--- saap $*"
  timeout "$limit" "$saap" --json "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  local rc=$?
  if [[ $rc == 7 && ${REFUSAL_OK:-0} == 1 ]]; then
    echo "refused (exit 7): $(grep -m1 'error' "$OUT/$name.log")"
    rm -f "$OUT/$name.json"
  elif [[ $rc != 0 ]]; then
    echo "FAILED (exit $rc):"
    tail -5 "$OUT/$name.log"
    status=1
  fi
  return 0
}

if [[ $mode == all || $mode == test ]]; then
  # 560 s: seven CPU-side eval ppl runs of 256 tokens (streaming, oracle x 2, saap, kmeans, quest,
  # loki) without BLAS, each against its GPU run; the artifacts are $PIECES'.
  SAAP_ARTIFACTS="$PIECES" SAAP_REQUIRE_GPU=1 timeout 560 build-cuda/tests/cuda_test_cli_device 2>&1 | tee "$OUT/cli_test.log"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if [[ $mode == all || $mode == generate ]]; then
  echo "--- saap generate --device cuda (streamed)"
  timeout 120 "$saap" generate "${model[@]}" --device cuda --chat --max-tokens 96 \
    --prompt "Explain in three sentences why the sky is blue." 2>&1 | tee "$OUT/cli_generate.txt" || status=1
  run cli_generate 120 generate "${model[@]}" --device cuda --chat --max-tokens 96 \
    --prompt "Explain in three sentences why the sky is blue."
fi
if [[ $mode == all || $mode == ppl ]]; then
  run cli_ppl_dense 300 eval ppl "${model[@]}" --device cuda --text "$SAAP_EVAL_TEXT" --window-len 2048 \
    --max-windows 12 --out "$OUT"
  run cli_ppl_saap 540 eval ppl "${model[@]}" --device cuda --text "$SAAP_EVAL_TEXT" --window-len 2048 \
    --max-windows 12 --out "$OUT" --method saap --artifact "$PIECES/saap-c256-pre.safetensors" --lookup 0.05
  run cli_ppl_kmeans 540 eval ppl "${model[@]}" --device cuda --text "$SAAP_EVAL_TEXT" --window-len 2048 \
    --max-windows 12 --out "$OUT" --method kmeans --artifact "$PIECES/kmeans-c256-pre.safetensors" --lookup 0.05
  for m in dense saap kmeans; do
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('ppl %s cuda: %.4f over %d windows, lookup %s (CPU runner: dense 23.2122, saap 5%% 32.81)' % (d['method'], d['perplexity'], d['windows'], d['lookup_fraction']))" \
      "$OUT/cli_ppl_$m.json" 2>/dev/null || true
  done
fi
if [[ $mode == all || $mode == passkey ]]; then
  pk=(eval passkey "${model[@]}" --device cuda --lengths 1024 2048 4096 8192 --trials "$TRIALS" --out "$OUT")
  run cli_passkey_dense 540 "${pk[@]}"
  IFS=';' read -r -a passkey_budgets <<< "$PASSKEY_BUDGETS"
  for budget in "${passkey_budgets[@]}"; do
    tag=$(echo "$budget" | tr -d ' -' | tr . p)
    REFUSAL_OK=1 run "cli_passkey_saap_$tag" 540 "${pk[@]}" --method saap --artifact "$PIECES/saap-c256-pre.safetensors" $budget
    REFUSAL_OK=1 run "cli_passkey_kmeans_$tag" 540 "${pk[@]}" --method kmeans --artifact "$PIECES/kmeans-c256-pre.safetensors" $budget
    REFUSAL_OK=1 run "cli_passkey_quest_$tag" 540 "${pk[@]}" --method quest $budget
  done
  REFUSAL_OK=1 run cli_passkey_loki 540 "${pk[@]}" --method loki --artifact "$PIECES/loki-pre.safetensors" --k-f 0.05 --d-f 0.25
  python3 - "$OUT" <<'PY' || true
import glob, json, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "cli_passkey_*.json"))):
    d = json.load(open(f))
    by = {}
    for r in d["passkey"]["by_length_depth"]:
        by.setdefault(r["length"], []).append(r["accuracy"])
    cells = "  ".join("%d: %.2f" % (l, sum(a) / len(a)) for l, a in sorted(by.items()))
    print("%-34s accuracy %.3f  (%s)  lookup %.4f" % (d["method"], d["passkey"]["accuracy"], cells, d["passkey"]["lookup_fraction"]))
PY
fi
if [[ $mode == all || $mode == niah ]]; then
  run cli_niah_dense 540 eval niah "${model[@]}" --device cuda --task passkey --lengths 1024 2048 4096 8192 \
    --trials 4 --batch 20 --out "$OUT"
  grep -v '^#' "$OUT/niah_passkey_repeated_dense_cuda.csv" 2>/dev/null || true
fi
if [[ $mode == all || $mode == gemma ]] && [[ -n ${SAAP_GEMMA_PATH:-} ]]; then
  gemma=(--model "$SAAP_GEMMA_PATH")
  run cli_gemma_generate 120 generate "${gemma[@]}" --device cuda --prompt "The capital of France is" --max-tokens 12
  run cli_gemma_ppl 300 eval ppl "${gemma[@]}" --device cuda --text "$SAAP_EVAL_TEXT" --window-len 2048 \
    --max-windows 12 --out "$OUT/gemma3"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('gemma3 ppl cuda: %.4f over %d windows (CPU runner 22.69)' % (d['perplexity'], d['windows']))" \
    "$OUT/cli_gemma_ppl.json" 2>/dev/null || true
fi
if [[ $mode == all || $mode == bench ]]; then
  run cli_bench 540 bench "${model[@]}" --device cuda --prompts 2048,8000 --batches 1,16 --decode-steps 128 --reps 3 \
    --methods dense,saap,quest --lookup 0.05 --artifact "saap=$PIECES/saap-c256-pre.safetensors" \
    --out "$OUT" --stem gpu_e2e_cli
  tail -n +1 "$OUT/gpu_e2e_cli.csv" 2>/dev/null | grep -v '^#' || true
fi
exit $status
