#!/usr/bin/env bash
# Issue 14's comparison on the GPU machine, in calls of at most 600 s:
#   scripts/gpu_gemma_tasks.sh niah   retrieval: passkey (repeated and text haystacks), multikey and
#                                     multivalue (text), 4k/8k/16k/32k tokens, 5 depths x 4 trials =
#                                     20 trials per (task, length), seed 1; ONE `saap eval niah
#                                     --device cuda --batch 20` process per (task, configuration),
#                                     every length and depth in it
#   scripts/gpu_gemma_tasks.sh ppl    perplexity of eval.txt, BOS + text windows: 32k x 6 windows and
#                                     8k x 24 windows (the dense rows of the README: 20.7991, 21.8945),
#                                     every position through the method (`saap eval ppl --device cuda`)
#   scripts/gpu_gemma_tasks.sh both   ppl (PPL_JOBS=1 process at a time) beside niah (JOBS) in one call,
#                                     both under the same TIME_LIMIT; two tarballs, two logs
# The configurations, most important first, are scripts/gemma_methods.sh's (dense; Saap, k-means and
# Quest at 5% and 2048 tokens; partition oracle 5%; Loki; StreamingLLM 2048; oracle 5%; then the
# rest of the grid). ppl runs dense and PPL_ONLY's sparse ones (default: Saap, k-means, Quest at 5%
# and 2048 tokens, Loki at d_f 0.25 and 0.125): 32k rows first, then 8k. A configuration the GPU runner refuses (exit 7,
# Unsupported, named) is recorded as refused and the run goes on.
#
# Time: no configuration is started once TIME_LIMIT seconds (default 520) have passed since the
# script began; one still running at HARD_LIMIT (default 585) is killed (recorded as timed out).
# Results live in $RESULTS (default /tmp/gemma_tasks, which outlives the call like /tmp/pieces):
# calling the same command again runs only what is not done yet (refused and failed ones are not
# retried: RETRY_FAILED=1 retries the failed). Every call leaves in $OUT two files:
#   gemma_tasks_<mode>.tar.gz  the whole $RESULTS/<mode> folder (every result so far: JSON/CSV
#                              with provenance, each process's log), and
#   gemma_tasks_<mode>.log     this call's progress: per process its seconds and seconds per trial.
# Then, here: tar xzf gemma_tasks_niah.tar.gz -C results/gemma3_tasks_<date>_h200 &&
#   python3 scripts/gemma_report.py results/gemma3_tasks_<date>_h200 --out results/gemma3_tasks_<date>_h200/report
#
# Inputs (the GPU machine's defaults, scripts/gpu_pieces.sh puts them there): SAAP_GEMMA_PATH=
# /tmp/pieces/gemma.gguf, SAAP_EVAL_TEXT=/tmp/pieces/eval.txt, GEMMA_ART=/tmp/pieces (gemma3-$CALIB-
# {saap,kmeans}-c1024.safetensors, gemma3-$CALIB-loki-pre.safetensors; CALIB=calib-3x16k).
# SAAP_BIN=build-cuda/saap (BUILD=1, the default, first runs `cmake --build build-cuda --target
# saap`, a no-op when it is current). Pass SAAP_GIT_COMMIT=<sha> SAAP_GIT_DIRTY=0 (no .git there).
# MPS=0 runs the processes without an MPS server (see below).
# Smaller runs: ONLY='dense|saap_5' (a regex of configuration names), TASKS=passkey:repeated,
# LENGTHS='4096 32768', DEPTHS=0.5, TRIALS=1, BATCH (default depths x trials: one batched prefill
# per length), JOBS (processes at once on the one GPU, default 2: one loads the model and makes its
# prompts on the CPU while the other runs on the GPU; each holds <= ~30 GB at batch 20 x 32k),
# DEVICE=cpu (this script's flow on a CPU machine, for a test).
#
# Expected time (estimates: measure with the probe below): a GPU process costs a fixed ~2-4 s (CUDA
# init, GGUF load and bf16 upload, prompts) plus ~3.3 s of prefill for 20 x (4k+8k+16k+32k) tokens
# (the dense 32k perplexity prefilled 6 x 32k tokens in 0.77 s) plus ~100 graph-replayed decode
# steps; the partition oracle and the oracle read every key per step (slower decode). niah: 25
# configurations x 4 tasks = 100 processes, ~6-8 s each: ~10-13 min at JOBS=1, about two calls; the
# first 8 configurations (dense .. loki_5) come first. ppl: dense ~5 s; a sparse configuration at 32k
# decodes ~32k teacher-forced steps at batch 6 (SmolLM2's 30 sparse layers: 2.8 ms a step; Gemma
# has 3 sparse global layers: ~0.5-1 ms a step): ~20-35 s; at 8k ~6-10 s; all of it ~3-4 min. The
# partition oracle is not in ppl's default (SmolLM2: 20 ms a step at 2k, ~30 ms expected at 32k).
# h2o_5 and h2o_2048 run niah with --method-prefill: every prompt position is a teacher-forced
# decode step (its heavy hitters accumulate over the prompt's queries), ~61k steps per process at
# batch 20 for 4k+8k+16k+32k; estimated (not measured) ~0.5-1.5 ms a step: ~0.5-1.5 min per
# process. Their perplexity (not in PPL_ONLY's default; add h2o_5|h2o_2048): ~32k steps at 32k.
# The CPU (2 cores, scripts/gemma_niah.sh): a 4096-token dense trial ~40 CPU-s.
set -uo pipefail
self=$(realpath "$0")
cd "$(dirname "$0")/.." || exit 1
mode=${1:-}
[[ $mode == niah || $mode == ppl || $mode == both ]] ||
  { echo "usage: scripts/gpu_gemma_tasks.sh niah|ppl|both" >&2; exit 2; }
TIME_LIMIT=${TIME_LIMIT:-520}
HARD_LIMIT=${HARD_LIMIT:-585}
# The call's start: both's two halves count from the parent's (its build included).
export GEMMA_TASKS_T0=${GEMMA_TASKS_T0:-$(date +%s)}
T0=$GEMMA_TASKS_T0
OUT=${OUT:-$PWD/gpu_out}
BIN=${SAAP_BIN:-build-cuda/saap}
if [[ ${BUILD:-1} == 1 ]]; then
  mkdir -p "$OUT"
  build_dir=$(dirname "$BIN")
  if ! { { [[ -f $build_dir/build.ninja ]] || cmake --preset cuda-only; } &&
         cmake --build "$build_dir" -j"$(nproc)" --target saap; } > "$OUT/gemma_tasks_build.log" 2>&1; then
    tail -40 "$OUT/gemma_tasks_build.log"
    echo "the saap CLI did not build: nothing run"
    exit 1
  fi
  echo "build ok ($BIN, $(( $(date +%s) - T0 )) s)"
  rm -f "$OUT/gemma_tasks_build.log"
fi
# MPS (MPS=1, the default on the GPU): the processes are clients of one MPS server of this call's
# own, so their small decode kernels run side by side instead of in time slices. Measured on the
# H200 (results/gpu_runner_tests_2026-12-03_h200_3f93cbb.txt): four sequential-decode processes
# together ran 3.0x one process's tokens per second under MPS, 1.4x without. The server quits when
# the script ends; both's two halves share the parent's.
if [[ ${DEVICE:-cuda} == cuda && ${MPS:-1} == 1 && -z ${CUDA_MPS_PIPE_DIRECTORY:-} ]] &&
   command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/saap_mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/saap_mps/log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d; then
    trap 'echo quit | nvidia-cuda-mps-control' EXIT
    echo "MPS server started (pipe $CUDA_MPS_PIPE_DIRECTORY)"
  else
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "MPS did not start: the processes share the GPU in time slices"
  fi
fi
if [[ $mode == both ]]; then
  # ppl (PPL_JOBS processes, default 1) beside niah (JOBS), on the one GPU: ppl's teacher-forced
  # decode steps leave the GPU idle between small kernels, which niah's prefills fill.
  BUILD=0 JOBS=${PPL_JOBS:-1} "$self" ppl &
  BUILD=0 "$self" niah
  wait
  exit 0
fi
RESULTS=${RESULTS:-/tmp/gemma_tasks}
RES=$RESULTS/$mode
mkdir -p "$OUT" "$RES"
LOG=$OUT/gemma_tasks_$mode.log
TIMING=$RES/timing.csv
MODEL=${SAAP_GEMMA_PATH:-/tmp/pieces/gemma.gguf}
TEXT=${SAAP_EVAL_TEXT:-/tmp/pieces/eval.txt}
ART=${GEMMA_ART:-/tmp/pieces}
CALIB=${CALIB:-calib-3x16k}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-2}
ONLY=${ONLY:-.*}
PPL_ONLY=${PPL_ONLY:-dense|saap_5|kmeans_5|quest_5|saap_2048|kmeans_2048|quest_2048|loki_5|loki_5_r32}
TASKS=${TASKS:-passkey:repeated passkey:text multikey:text multivalue:text}
LENGTHS=${LENGTHS:-4096 8192 16384 32768}
DEPTHS=${DEPTHS:-0.1 0.3 0.5 0.7 0.9}
TRIALS=${TRIALS:-4}
SEED=${SEED:-1}
read -ra depth_list <<< "$DEPTHS"
read -ra length_list <<< "$LENGTHS"
BATCH=${BATCH:-$(( ${#depth_list[@]} * TRIALS ))}
PPL_WINDOWS=${PPL_WINDOWS:-32768:6 8192:24}  # window:count, in this order
# Host threads per process: the cores shared by the processes running at once.
export OMP_NUM_THREADS=$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))

# Every file this script leaves starts with the provenance lines that results/ requires
# (scripts/check_provenance.py): machine and commit once, date and command per file.
PROV_BASE=$(python3 scripts/provenance.py lines --command - 2>/dev/null) ||
  PROV_BASE="# machine: $(hostname)
# commit: ${SAAP_GIT_COMMIT:-unknown}"
prov_header() {  # command
  grep -v -e '^# command:' -e '^# date:' <<< "$PROV_BASE"
  echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# command: $1"
}
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(date -u +%H:%M:%S) +$(elapsed)s] $*" | tee -a "$LOG"; }

prov_header "$self $mode" > "$LOG"
log "gpu_gemma_tasks.sh $mode: TIME_LIMIT=$TIME_LIMIT HARD_LIMIT=$HARD_LIMIT JOBS=$JOBS$([[ $mode == niah ]] && echo " BATCH=$BATCH") results in $RES"
if ! git rev-parse HEAD >/dev/null 2>&1 && [[ -z ${SAAP_GIT_COMMIT:-} ]]; then
  log "warning: no git checkout and no SAAP_GIT_COMMIT: every result will record commit 'unknown'"
fi
for f in "$BIN" "$MODEL" "$TEXT"; do
  [[ -e $f ]] || { log "missing $f: nothing run"; exit 1; }
done
SAAP_ART="$ART/gemma3-$CALIB-saap-c1024.safetensors"
KMEANS_ART="$ART/gemma3-$CALIB-kmeans-c1024.safetensors"
LOKI_ART="$ART/gemma3-$CALIB-loki-pre.safetensors"
for f in "$SAAP_ART" "$KMEANS_ART" "$LOKI_ART"; do
  [[ -f $f ]] || log "warning: no $f: the configurations that read it fail by name"
done
[[ $DEVICE == cuda ]] && command -v nvidia-smi >/dev/null &&
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader | tee -a "$LOG"
# shellcheck source=scripts/gemma_methods.sh
source scripts/gemma_methods.sh
mapfile -t CONFIGS < <(gemma_configs "$SAAP_ART" "$KMEANS_ART" "$LOKI_ART")
[[ -f $TIMING ]] || { prov_header "$self $mode"; echo "mode,job,rc,seconds,trials,seconds_per_trial,started_at_s,command"; } > "$TIMING"

# One process: stem (its results are $RES/<stem>.{json,csv}, its output $RES/<stem>.log), the
# trials (or windows) it runs, then saap's arguments. Exit 7 (refused by name) leaves
# <stem>.refused.log, another failure <stem>.failed.log; a process killed at HARD_LIMIT or out of GPU
# memory (exit 6, e.g. beside another process) leaves no mark and runs again in the next call.
run_one() {
  local stem=$1 trials=$2 unit=${UNIT:-trials}
  shift 2
  local start now limit rc secs per
  start=$(date +%s.%N)
  now=$(elapsed)
  limit=$(( HARD_LIMIT - now ))
  prov_header "$BIN $*" > "$RES/$stem.log"
  timeout --kill-after=5 "$limit" "$BIN" "$@" >> "$RES/$stem.log" 2>&1
  rc=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}')
  per=$(awk -v s="$secs" -v n="$trials" 'BEGIN{printf "%.3f", s / n}')
  printf '%s,%s,%s,%s,%s,%s,%s,"%s"\n' "$mode" "$stem" "$rc" "$secs" "$trials" "$per" "$now" "$BIN $*" >> "$TIMING"
  # eval ppl names its files by method and window only: each configuration runs in a folder of its
  # own ($RES/<stem>.d), whose files move up under the configuration's name.
  if [[ -d $RES/$stem.d ]]; then
    if [[ $rc == 0 ]]; then
      for f in "$RES/$stem.d"/*.json "$RES/$stem.d"/*.csv; do [[ -f $f ]] && mv "$f" "$RES/$stem.${f##*.}"; done
    fi
    rm -rf "$RES/$stem.d"
  fi
  case $rc in
    0) log "ok       $stem: ${secs} s, $trials $unit, ${per} s per ${unit%s}";;
    7) { prov_header "$BIN $*"; grep -m1 -i 'error' "$RES/$stem.log"; } > "$RES/$stem.refused.log"
       log "refused  $stem (exit 7): $(grep -m1 -i 'error' "$RES/$stem.log")";;
    124|137) log "TIMEOUT  $stem: killed at HARD_LIMIT after ${secs} s (runs again in the next call)";;
    6) log "OUT OF GPU MEMORY $stem (runs again in the next call; JOBS=1 if it repeats): $(grep -m1 -i error "$RES/$stem.log")";;
    *) { prov_header "$BIN $*"; tail -3 "$RES/$stem.log"; } > "$RES/$stem.failed.log"
       log "FAILED   $stem (exit $rc): $(tail -1 "$RES/$stem.log")";;
  esac
}

# Starts run_one in the background once fewer than JOBS run; "skip" when done before, refused or
# failed (unless RETRY_FAILED=1), or past TIME_LIMIT.
wanted=()
launch() {
  local stem=$1
  wanted+=("$stem")
  if [[ -f $RES/$stem.json ]]; then return; fi
  if [[ -f $RES/$stem.refused.log ]]; then return; fi
  if [[ -f $RES/$stem.failed.log && ${RETRY_FAILED:-0} != 1 ]]; then return; fi
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
  (( $(elapsed) < TIME_LIMIT )) || return
  rm -f "$RES/$stem.failed.log"
  run_one "$@" &
}

n_trials=$(( ${#length_list[@]} * ${#depth_list[@]} * TRIALS ))
if [[ $mode == niah ]]; then
  device_flags=(--device "$DEVICE" --batch "$BATCH")
  if [[ ${PROBE:-1} == 1 && ! -f $RES/probe.json ]]; then
    # The fixed cost of one process (CUDA init, model load and upload, one 4k trial), alone on the GPU.
    run_one probe 1 eval niah --model "$MODEL" --task passkey --lengths 4096 --depths 0.5 --trials 1 \
      --seed "$SEED" --method dense "${device_flags[@]}" --out "$RES" --stem probe
    log "probe: the fixed cost of a process is about the seconds above"
  fi
  for cfg in "${CONFIGS[@]}"; do
    name=${cfg%%|*}
    read -ra flags <<< "${cfg#*|}"
    [[ $name =~ ^($ONLY)$ ]] || continue
    for T in $TASKS; do
      task=${T%%:*} hay=${T##*:}
      filler=()
      [[ $hay == text ]] && filler=(--filler "$TEXT")
      # shellcheck disable=SC2086
      launch "${task}_${hay}_${name}" "$n_trials" eval niah --model "$MODEL" --task "$task" --haystack "$hay" \
        "${filler[@]}" --lengths "${length_list[@]}" --depths "${depth_list[@]}" --trials "$TRIALS" --seed "$SEED" \
        "${flags[@]}" "${device_flags[@]}" --out "$RES" --stem "${task}_${hay}_${name}"
    done
  done
else
  # ppl: dense at every window first (a prefill each), then each sparse configuration at 32k, then at 8k.
  ppl_job() {  # name window windows flags... (--method-prefill left out: ppl runs every position through the method)
    local name=$1 window=$2 windows=$3
    shift 3
    local kept=()
    for f in "$@"; do [[ $f == --method-prefill ]] || kept+=("$f"); done
    set -- "${kept[@]}"
    UNIT=windows launch "ppl_${name}_w${window}" "$windows" eval ppl --model "$MODEL" --text "$TEXT" --window-len "$window" \
      --max-windows "$windows" "$@" --device "$DEVICE" --batch "$windows" --out "$RES/ppl_${name}_w${window}.d"
  }
  for pass in dense sparse; do
    for spec in $PPL_WINDOWS; do
      for cfg in "${CONFIGS[@]}"; do
        name=${cfg%%|*}
        read -ra flags <<< "${cfg#*|}"
        [[ $name =~ ^($PPL_ONLY)$ && $name =~ ^($ONLY)$ ]] || continue
        if [[ $pass == dense ]]; then [[ $name == dense ]] || continue; else [[ $name != dense ]] || continue; fi
        ppl_job "$name" "${spec%%:*}" "${spec##*:}" "${flags[@]}"
      done
    done
  done
fi
wait
pending=()
for stem in "${wanted[@]}"; do
  [[ -f $RES/$stem.json || -f $RES/$stem.refused.log || -f $RES/$stem.failed.log ]] || pending+=("$stem")
done
if (( ${#pending[@]} )); then
  log "not done (not started by TIME_LIMIT $TIME_LIMIT s, killed at HARD_LIMIT, or out of memory): ${pending[*]}"
  log "call the same command again to run them (results so far are kept in $RES)"
else
  log "every configuration of this mode is done, refused or failed"
fi
shopt -s nullglob
results=("$RES"/*.json) refused=("$RES"/*.refused.log) failed=("$RES"/*.failed.log)
log "done: ${#results[@]} result files (the probe included), ${#refused[@]} refused, ${#failed[@]} failed"
cp "$LOG" "$RES/call_$(date -u +%H%M%S).log"
tar czf "$OUT/gemma_tasks_$mode.tar.gz" -C "$RESULTS" "$mode"
log "wrote $OUT/gemma_tasks_$mode.tar.gz ($(du -h "$OUT/gemma_tasks_$mode.tar.gz" | cut -f1))"
