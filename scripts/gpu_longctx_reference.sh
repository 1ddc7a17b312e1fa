#!/usr/bin/env bash
# Issue 14: is the collapse of Gemma-3-270M's dense retrieval with length (passkey 20/20 at 4k, 4/20
# at 32k) our runner's, the prompt format's or the model's? ONE call on the GPU machine (< 300 s):
#   1. `saap eval niah --dump-prompts` writes the prompts (seed 1, the H200 run's trials): for each of
#      TASKS, LONG (32768) x 5 depths x LONG_TRIALS (2) and SHORT (4096 16384) x 5 depths x
#      SHORT_TRIALS (1); `saap eval ppl --dump-windows` the first PPL_WINDOWS (2) windows of
#      PPL_WINDOW (32768) tokens of eval.txt; no model runs;
#   2. our GPU runner, dense, on the same trials (`saap eval niah --device cuda`, one process per
#      task, every length at LONG_TRIALS: a superset), and `saap eval ppl` dense on the first
#      PPL_WINDOWS (2) 32k windows of eval.txt;
#   3. scripts/niah_transformers.py (Hugging Face transformers, fp32, SDPA, greedy with HF's cache)
#      beside it on the same GPU: the perplexity of the same windows first, then each prompt file,
#      the 32k files first in TASKS' order, as it is (plain) and in the classic passkey format
#      around the same haystack (passkey files); it starts no trial after TIME_LIMIT (default 250 s
#      since this script began) and is killed at HARD_LIMIT (285 s); what it finished is in
#      hf/hf_progress.jsonl either way;
#   4. when BF16_AFTER (default 200) s have not yet passed when it ends, HF in bf16 on the 32k passkey
#      prompts (plain), as far as TIME_LIMIT lets it;
#   5. scripts/niah_compare.py: the per-trial table (ours vs HF plain / classic / bf16) and the ppl rows.
# Everything goes to $OUT/longctx_reference/ (compare.md and compare.csv are the answer; saap/,
# saap_b1/, hf/, logs/, each file with its provenance), and a tarball of it to
# $OUT/longctx_reference.tar.gz; the prompts (~20 MB of token ids) to PROMPTS_DIR (/tmp/longctx_prompts).
#
# Inputs (the GPU machine's defaults): SAAP_GEMMA_PATH=/tmp/pieces/gemma.gguf, SAAP_EVAL_TEXT=
# /tmp/pieces/eval.txt, SAAP_BIN=build-cuda/saap (BUILD=1, the default, runs `cmake --build
# build-cuda --target saap` first, configuring with the cuda-only preset when build-cuda is missing:
# a no-op when it is current), PY=python3 with torch and transformers (>= 5); the gguf package that
# transformers needs to read a GGUF is unpacked from .whl/gguf-*.whl (carry .whl) when missing.
# Pass SAAP_GIT_COMMIT=<sha> SAAP_GIT_DIRTY=0 (no .git there).
# A CPU check (here, 2 cores, ~10 min): DEVICE=cpu LONG=1024 SHORT= LONG_TRIALS=1 DEPTHS=0.5 PPL_WINDOW=1024 \
#   PPL_WINDOWS=1 TIME_LIMIT=0 HARD_LIMIT=0 SAAP_BIN=build/saap SAAP_GEMMA_PATH=<gguf> SAAP_EVAL_TEXT=<eval.txt> \
#   OUT=/tmp/x scripts/gpu_longctx_reference.sh
#
# Expected time on an H200 (estimates; each step's seconds are in run.log): build no-op ~5 s; dumps
# ~3 s; our runner ~3-5 s per task process (3), ~3 s for the ppl and ~5 s per batch-1 run, beside
# HF. HF: load (GGUF dequantization, tokenizer conversion) ~20-40 s; a 32k prefill in fp32 is
# ~8e13 attention FLOPs (SDPA's fp32 kernel computes the sliding layers' full 32k x 32k too), ~2-6 s
# at 15-40 TFLOP/s, + <= 12 cached decode steps; a 16k prompt a quarter of that, a 4k one ~0.1 s.
# So the 2 ppl windows ~5-12 s, each 32k file ~20-60 s per mode: 5 (file, mode) runs at 32k
# (passkey x 2 modes x 2 haystacks, multikey plain) ~100-300 s, the short files ~20-40 s. TIME_LIMIT
# cuts the tail (the short files, then multikey, then passkey/text classic) when the GPU is slow;
# bf16 (~20-40 s) runs only when HF is done by BF16_AFTER. The script ends by ~290 s in any case.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
T0=$(date +%s)
OUT=${OUT:-/tmp/longctx_out}
GEMMA=${SAAP_GEMMA_PATH:-/tmp/pieces/gemma.gguf}
TEXT=${SAAP_EVAL_TEXT:-/tmp/pieces/eval.txt}
SAAP_BIN=${SAAP_BIN:-build-cuda/saap}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
BUILD=${BUILD:-$([[ $DEVICE == cuda ]] && echo 1 || echo 0)}
TASKS=${TASKS:-passkey:repeated passkey:text multikey:text}
LONG=${LONG:-32768}
SHORT=${SHORT-4096 16384}
DEPTHS=${DEPTHS:-0.1 0.3 0.5 0.7 0.9}
LONG_TRIALS=${LONG_TRIALS:-2}
SHORT_TRIALS=${SHORT_TRIALS:-1}
PPL_WINDOW=${PPL_WINDOW:-32768}
PPL_WINDOWS=${PPL_WINDOWS:-2}
TIME_LIMIT=${TIME_LIMIT:-250}
HARD_LIMIT=${HARD_LIMIT:-285}
BF16_AFTER=${BF16_AFTER:-200}
W=$OUT/longctx_reference
mkdir -p "$W/saap" "$W/saap_b1" "$W/hf" "$W/logs"
log=$W/run.log
P=${PROMPTS_DIR:-/tmp/longctx_prompts}  # ~20 MB of token ids: outside $OUT (the dump command remakes them)
mkdir -p "$P"
rm -rf /tmp/longctx_hf_tokenizer  # the HF tokenizer converted by this call's first HF process, for its second
elapsed() { echo $(($(date +%s) - T0)); }
left_to_hard_limit() { local s=$((HARD_LIMIT - $(elapsed))); echo $((s < 5 ? 5 : s)); }  # timeout 0 would mean none
# A log's first lines: the provenance of the command that writes it (scripts/provenance.py).
log_head() { $PY scripts/provenance.py lines --command "$2" > "$1" 2>/dev/null || : > "$1"; }
say() { echo "[$(elapsed) s] $*" | tee -a "$log"; }
$PY scripts/provenance.py lines --command "$0 $*" --input model="$GEMMA" --input text="$TEXT" > "$log" 2>/dev/null ||
  echo "# provenance: unavailable" > "$log"
say "longctx reference: DEVICE=$DEVICE TASKS='$TASKS' LONG=$LONG x $LONG_TRIALS SHORT='$SHORT' x $SHORT_TRIALS"

if [[ $BUILD == 1 ]]; then
  [[ -d build-cuda ]] || cmake --preset cuda-only > "$W/logs/build.log" 2>&1
  cmake --build build-cuda --target saap -j "$(nproc)" >> "$W/logs/build.log" 2>&1 ||
    { say "build failed (logs/build.log)"; tail -20 "$W/logs/build.log"; exit 1; }
  say "built $SAAP_BIN"
fi
"$SAAP_BIN" eval niah --help | grep -q -- --dump-prompts ||
  { say "$SAAP_BIN has no --dump-prompts: rebuild it from this tree"; exit 1; }
if ! $PY -c "import gguf" 2>/dev/null; then
  whl=$(ls .whl/gguf-*.whl 2>/dev/null | head -1)
  [[ -n $whl ]] || { say "no gguf package and no .whl/gguf-*.whl (carry .whl)"; exit 1; }
  # A pure-Python wheel is a zip: unpacked onto PYTHONPATH it is installed (its dist-info too, which
  # transformers' is_gguf_available reads); no pip, no network. Its needs (numpy, pyyaml, requests,
  # tqdm) come with transformers.
  rm -rf /tmp/longctx_pylib
  $PY -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$whl" /tmp/longctx_pylib &&
    export PYTHONPATH=/tmp/longctx_pylib${PYTHONPATH:+:$PYTHONPATH} && $PY -c "import gguf" ||
    { say "gguf from $whl does not import"; exit 1; }
  say "gguf unpacked from $whl onto PYTHONPATH"
fi

# 1. The prompts: the 32k files first (HF runs them in the order given).
long_files=() short_files=()
for spec in $TASKS; do
  task=${spec%%:*} hay=${spec##*:}
  "$SAAP_BIN" eval niah --model "$GEMMA" --filler "$TEXT" --task "$task" --haystack "$hay" --lengths $LONG \
    --depths $DEPTHS --trials "$LONG_TRIALS" --seed 1 --dump-prompts "$P/${task}_${hay}_long.jsonl" >> "$log" 2>&1 ||
    { say "dump $spec long failed"; exit 1; }
  long_files+=("$P/${task}_${hay}_long.jsonl")
  if [[ -n $SHORT ]]; then
    "$SAAP_BIN" eval niah --model "$GEMMA" --filler "$TEXT" --task "$task" --haystack "$hay" --lengths $SHORT \
      --depths $DEPTHS --trials "$SHORT_TRIALS" --seed 1 --dump-prompts "$P/${task}_${hay}_short.jsonl" >> "$log" 2>&1 ||
      { say "dump $spec short failed"; exit 1; }
    short_files+=("$P/${task}_${hay}_short.jsonl")
  fi
done
"$SAAP_BIN" eval ppl --model "$GEMMA" --text "$TEXT" --window-len "$PPL_WINDOW" --max-windows "$PPL_WINDOWS" \
  --dump-windows "$P/ppl_windows.jsonl" >> "$log" 2>&1 || { say "dump of the ppl windows failed"; exit 1; }
say "prompts dumped: ${#long_files[@]} long, ${#short_files[@]} short files; $PPL_WINDOWS ppl windows"

# 3. HF in the background (it loads on the CPU first) while our runner uses the GPU.
hf_limit=$((TIME_LIMIT > 0 ? TIME_LIMIT - $(elapsed) : 0))
((TIME_LIMIT > 0 && hf_limit < 1)) && hf_limit=1
hf_cmd=($PY scripts/niah_transformers.py --model "$GEMMA" --device "$DEVICE" --out "$W/hf" --time-limit "$hf_limit"
        --prompts "${long_files[@]}" "${short_files[@]}" --modes plain classic --ppl-first
        --ppl-text "$TEXT" --ppl-window "$PPL_WINDOW" --ppl-windows "$PPL_WINDOWS" --ppl-saap-windows "$P/ppl_windows.jsonl"
        --ppl-saap-result "$W/saap/ppl_dense_w${PPL_WINDOW}$([[ $DEVICE == cuda ]] && echo _cuda).json"
        --tokenizer-cache /tmp/longctx_hf_tokenizer)
log_head "$W/logs/hf.log" "${hf_cmd[*]}"
if ((HARD_LIMIT > 0)); then
  timeout -s KILL $(left_to_hard_limit) "${hf_cmd[@]}" >> "$W/logs/hf.log" 2>&1 &
else
  "${hf_cmd[@]}" >> "$W/logs/hf.log" 2>&1 &
fi
hf_pid=$!
say "HF started (pid $hf_pid$( ((hf_limit > 0)) && echo ", no trial after $hf_limit s of its own"))"

# 2. Our runner, dense: the ppl first (HF reads its window NLLs when it gets there), then the tasks.
device_args=()
[[ $DEVICE == cuda ]] && device_args=(--device cuda --batch "$PPL_WINDOWS")
ppl_cmd=("$SAAP_BIN" eval ppl --model "$GEMMA" --text "$TEXT" --window-len "$PPL_WINDOW" --max-windows "$PPL_WINDOWS"
         "${device_args[@]}" --out "$W/saap")
log_head "$W/logs/saap_ppl.log" "${ppl_cmd[*]}"
"${ppl_cmd[@]}" >> "$W/logs/saap_ppl.log" 2>&1 || say "saap eval ppl failed (logs/saap_ppl.log)"
say "saap ppl done: $(grep -o 'perplexity [0-9][0-9.]*' "$W/logs/saap_ppl.log" | head -1)"
n_depths=$(wc -w <<< "$DEPTHS")
for spec in $TASKS; do
  task=${spec%%:*} hay=${spec##*:}
  [[ $DEVICE == cuda ]] && device_args=(--device cuda --batch $((n_depths * LONG_TRIALS)))
  niah_cmd=("$SAAP_BIN" eval niah --model "$GEMMA" --filler "$TEXT" --task "$task" --haystack "$hay" --lengths $SHORT $LONG
            --depths $DEPTHS --trials "$LONG_TRIALS" --seed 1 --method dense "${device_args[@]}" --out "$W/saap"
            --stem "${task}_${hay}_dense")
  log_head "$W/logs/saap_${task}_${hay}.log" "${niah_cmd[*]}"
  "${niah_cmd[@]}" >> "$W/logs/saap_${task}_${hay}.log" 2>&1 || say "saap $spec failed (logs/saap_${task}_${hay}.log)"
  say "saap $spec: $(grep -E '^ +[0-9]+ ' "$W/logs/saap_${task}_${hay}.log" | awk '{printf "%s:%s ", $1, $2}')"
done

# Our runner at batch 1 on the 32k passkey prompts: one prefill chunk of the whole prompt (at batch
# 10 a chunk is 3276 tokens: max_prefill_rows / batch), so a chunk-boundary bug would show here.
if [[ $DEVICE == cuda ]]; then
  for spec in $TASKS; do
    task=${spec%%:*} hay=${spec##*:}
    [[ $task == passkey ]] || continue
    b1_cmd=("$SAAP_BIN" eval niah --model "$GEMMA" --filler "$TEXT" --task "$task" --haystack "$hay" --lengths $LONG
            --depths $DEPTHS --trials "$LONG_TRIALS" --seed 1 --method dense --device cuda --batch 1 --out "$W/saap_b1"
            --stem "${task}_${hay}_dense_b1")
    log_head "$W/logs/saap_b1_${task}_${hay}.log" "${b1_cmd[*]}"
    "${b1_cmd[@]}" >> "$W/logs/saap_b1_${task}_${hay}.log" 2>&1 || say "saap b1 $spec failed"
    say "saap batch 1 $spec: $(grep -E '^ +[0-9]+ ' "$W/logs/saap_b1_${task}_${hay}.log" | awk '{printf "%s:%s ", $1, $2}')"
  done
fi

wait "$hf_pid"
say "HF exited with $? ($(grep -c . "$W/hf/hf_progress.jsonl" 2>/dev/null || echo 0) trials/windows done)"

# 4. bf16 HF on the 32k passkey prompts, while time is left.
if ((TIME_LIMIT == 0 || $(elapsed) < BF16_AFTER)); then
  bf16_files=()
  for f in "${long_files[@]}"; do [[ $(basename "$f") == passkey_* ]] && bf16_files+=("$f"); done
  hf_limit=$((TIME_LIMIT > 0 ? TIME_LIMIT - $(elapsed) : 0))
  ((TIME_LIMIT > 0 && hf_limit < 1)) && hf_limit=1
  bf16_cmd=($PY scripts/niah_transformers.py --model "$GEMMA" --device "$DEVICE" --out "$W/hf" --dtype bfloat16
            --time-limit "$hf_limit" --prompts "${bf16_files[@]}" --modes plain --tokenizer-cache /tmp/longctx_hf_tokenizer)
  log_head "$W/logs/hf_bf16.log" "${bf16_cmd[*]}"
  if ((HARD_LIMIT > 0)); then timeout -s KILL $(left_to_hard_limit) "${bf16_cmd[@]}" >> "$W/logs/hf_bf16.log" 2>&1
  else "${bf16_cmd[@]}" >> "$W/logs/hf_bf16.log" 2>&1; fi
  say "HF bf16 exited with $?"
fi

# 5. The comparison.
ppl_json=$W/saap/ppl_dense_w${PPL_WINDOW}$([[ $DEVICE == cuda ]] && echo _cuda).json
b1=()
for f in "$W"/saap_b1/*_dense_b1.json; do [[ -f $f ]] && b1+=("ours_b1=$f"); done
log_head "$W/logs/compare.log" "scripts/niah_compare.py"
$PY scripts/niah_compare.py --saap "$W"/saap/*_dense.json --hf "$W/hf" $([[ -f $ppl_json ]] && echo --saap-ppl "$ppl_json") \
  ${b1[@]+--saap-column "${b1[@]}"} \
  --out "$W" --stem compare >> "$W/logs/compare.log" 2>&1 ||
  say "compare failed (logs/compare.log)"
grep -v '^#' "$W/logs/compare.log" | tee -a "$log"
say "done"
tar czf "$OUT/longctx_reference.tar.gz" -C "$OUT" longctx_reference
