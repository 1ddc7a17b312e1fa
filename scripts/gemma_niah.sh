#!/usr/bin/env bash
# Long-context retrieval on Gemma-3-270M (issue 14, item 4): passkey (repeated and text haystacks),
# multikey and multivalue, dense and the sparse methods, 20 trials per (task, length), each method
# scored on the trials dense gets right (agreement). One single-threaded process per (task, method,
# length, depth) shard, JOBS at once; then the shards of each (task, method) are joined by
# `saap eval niah --merge`, with the dense shards as --reference.
# Usage: scripts/gemma_niah.sh [build dir] [artifact dir] [jobs] [lengths...]
#   e.g. scripts/gemma_niah.sh build /tmp/gemma_art 16 4096 8192
# Artifacts: gemma3-<calib>-{saap,kmeans}-c1024.safetensors from scripts/gemma_longctx_train.sh
# (CALIB=calib-3x16k by default). Writes results/gemma3_niah/<task>_<haystack>_<method>.{json,csv}
# and the shards under results/gemma3_niah/shards/.
# CPU cost (2-core dev machine, idle): a 4096-token dense trial ~40 CPU-s, 16384 ~160 CPU-s; 32k
# trials are for the GPU backend.
set -euo pipefail
BIN=$(realpath "${1:-build}")/saap
ART=${2:-/tmp/gemma_art}
JOBS=${3:-$(nproc)}
shift $(( $# < 3 ? $# : 3 ))
LENGTHS=${*:-4096 8192 16384 32768}
CALIB=${CALIB:-calib-3x16k}
SAAP="$ART/gemma3-$CALIB-saap-c1024.safetensors" KMEANS="$ART/gemma3-$CALIB-kmeans-c1024.safetensors"
LOKI="$ART/gemma3-$CALIB-loki-pre.safetensors"
OUT=${NIAH_OUT:-results/gemma3_niah} SH=${NIAH_OUT:-results/gemma3_niah}/shards
mkdir -p "$SH"
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1
# The GPU runs this grid with scripts/gpu_gemma_tasks.sh niah (one process per task and method).
# A smaller run: e.g. TASKS=passkey:repeated DEPTHS=0.5 TRIALS=1 ONLY='dense|saap_5' (a regex of names).
DEPTHS=${DEPTHS:-0.1 0.3 0.5 0.7 0.9}
TRIALS=${TRIALS:-4}
TASKS=${TASKS:-passkey:repeated passkey:text multikey:text multivalue:text}
# The configurations: scripts/gemma_methods.sh's grid; by default the eight the CPU can afford.
ONLY=${ONLY:-dense|saap_5|kmeans_5|saap_2048|kmeans_2048|quest_5|streaming_2048|loki_5}
# shellcheck source=scripts/gemma_methods.sh
source "$(dirname "$0")/gemma_methods.sh"
mapfile -t METHODS < <(gemma_configs "$SAAP" "$KMEANS" "$LOKI")
{
  for T in $TASKS; do for M in "${METHODS[@]}"; do for L in $LENGTHS; do for D in $DEPTHS; do
    task=${T%%:*} hay=${T##*:} name=${M%%|*} flags=${M#*|}
    [[ $name =~ ^($ONLY)$ ]] || continue
    stem="${task}_${hay}_${name}_L${L}_d${D}"
    echo "eval niah --model gemma3 --task $task --haystack $hay --lengths $L --depths $D --trials $TRIALS --seed 1 \
$flags --out $SH --stem $stem > /dev/null 2> $SH/$stem.err"
  done; done; done; done
} | xargs -P "$JOBS" -I{} sh -c "\"$BIN\" {} || echo 'failed (see its .err): {}' >&2"

for T in $TASKS; do
  task=${T%%:*} hay=${T##*:}
  dense=$(ls "$SH/${task}_${hay}_dense_L"*.json)
  for M in "${METHODS[@]}"; do
    name=${M%%|*}
    [[ $name =~ ^($ONLY)$ ]] || continue
    runs=$(ls "$SH/${task}_${hay}_${name}_L"*.json 2>/dev/null) || { echo "no runs of $task/$hay/$name" >&2; continue; }
    # shellcheck disable=SC2086
    "$BIN" eval niah --merge $runs --reference $dense --out "$OUT" --stem "${task}_${hay}_${name}"
  done
done
