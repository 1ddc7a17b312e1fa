#!/usr/bin/env bash
# Reproduces results/saap_*: calibration on calib.txt, the key partitions (spherical k-means) and
# Saap's routers, then the evaluation on eval.txt: attention metrics at equal measured KV fraction
# (C = 128, 256, 512; pre- and post-RoPE), perplexity over 12 windows and passkey, Saap beside the
# symmetric k-means baseline on the same partition.
# Usage: scripts/saap_experiments.sh [build dir] [parallel jobs]
# CPU only. The perplexity and passkey runs are independent single-threaded processes; JOBS of them
# run at once (the recorded results used 16, on a 16-core host).
# Every file it writes under results/ carries its provenance (date, machine, commit of the saap
# binary, command, inputs by sha256): the CLI's files and --json outputs, and saap_tables.py's tables.
# Saap and its k-means baseline share ONE partition at every C: the k-means artifact is trained first
# and Saap takes its centroids (--partition-from); the run stops if a Saap artifact ran k-means of
# its own (given_partition_layers != layers). The Saap JSON's provenance names the partition's file
# and sha256 (input "partition_from"), the grids' name every artifact they read.
set -euo pipefail
BIN=$(realpath "${1:-build}")/saap
JOBS=${2:-$(nproc)}
CAL=~/.cache/saap/calib/calib-16x2048-q384.safetensors
ART=~/.cache/saap/calib
OUT=results
SINKS=4 WINDOW=16
mkdir -p "$ART" "$OUT"
export OMP_WAIT_POLICY=passive

# 1. Calibration set (calib.txt, never eval.txt): 16 windows x 2048 tokens, 384 queries per window
#    drawn with density proportional to position (long prefixes). Its run (and time) in results/.
[ -f "$CAL" ] || "$BIN" --json calibrate --windows 16 --window-len 2048 --queries 384 --seed 1 --out "$CAL" \
  > "$OUT/saap_calibrate.json"

# 2. Partitions (k-means alone: the symmetric baseline's artifact), then Saap's routers trained on
#    each partition as is. Labels leave out the same sinks and window that decode reads anyway.
train() {  # C ROPE
  local km="$ART/kmeans-c$1-$2.safetensors" saap="$ART/saap-c$1-$2.safetensors"
  [ -f "$km" ] || "$BIN" --json train kmeans --calib "$CAL" --out "$km" --partitions "$1" --rope "$2" \
    --kmeans-iters 15 --seed 1 > "$OUT/saap_train_kmeans_c$1_$2.json"
  "$BIN" --json train saap --calib "$CAL" --out "$saap" --partition-from "$km" --partitions "$1" --rope "$2" \
    --hidden 128 --epochs 30 --patience 3 --sinks $SINKS --window $WINDOW --min-prefix 256 --max-queries 0 --seed 1 \
    > "$OUT/saap_train_c$1_$2.json"
  python3 - "$OUT/saap_train_c$1_$2.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
if d.get("given_partition_layers") != d["layers"]:
    sys.exit(f"{sys.argv[1]}: Saap took {d.get('given_partition_layers')} of {d['layers']} layers' partition from "
             "its k-means artifact; the comparison needs one shared partition")
PY
}
for C in 256 128 512; do train $C pre; done
train 256 post

# 3. Attention metrics on eval.txt, every method replaying identical activations, measured KV fractions.
#    The partition oracle (exact scores of every key at every position) is the slow one (~7 min a grid).
grid() {  # STEM FRACTIONS RUNS...
  local stem=$1 fractions=$2
  shift 2
  "$BIN" eval saap-grid --windows 1 --window-len 2048 --queries 96 --sinks $SINKS --window $WINDOW \
    --fractions $fractions "$@" --out "$OUT" --stem "$stem"
}
grid saap_attention "0.02 0.05 0.1 0.2" --run saap=saap:"$ART/saap-c256-pre.safetensors" \
  --run kmeans=kmeans:"$ART/kmeans-c256-pre.safetensors" \
  --run partition-oracle=partition-oracle:"$ART/kmeans-c256-pre.safetensors" --run oracle=oracle:
for C in 128 512; do
  grid saap_attention_c$C "0.02 0.05 0.1 0.2" --run saap=saap:"$ART/saap-c$C-pre.safetensors" \
    --run kmeans=kmeans:"$ART/kmeans-c$C-pre.safetensors" \
    --run partition-oracle=partition-oracle:"$ART/kmeans-c$C-pre.safetensors"
done
grid saap_attention_post "0.05 0.1" --run saap-post=saap:"$ART/saap-c256-post.safetensors" \
  --run kmeans-post=kmeans:"$ART/kmeans-c256-post.safetensors" \
  --run partition-oracle-post=partition-oracle:"$ART/kmeans-c256-post.safetensors"

# 4. Perplexity, every position through the method: 12 windows of 2048 tokens in 2 shards of 6 per
#    (method, fraction); dense over the same 12 windows. Then passkey, 5 depths per length.
PPL="$OUT/saap_ppl_runs"
PK="$OUT/saap_passkey_runs"
mkdir -p "$PPL" "$PK"
{
  for M in saap kmeans; do for F in 0.02 0.05 0.1 0.2; do for S in 0 1; do
    A="$ART/saap-c256-pre.safetensors"
    [ $M = kmeans ] && A="$ART/kmeans-c256-pre.safetensors"
    echo "--json eval ppl --window-len 2048 --first-window $((S * 6)) --max-windows 6 --method $M --lookup $F \
--sinks $SINKS --window $WINDOW --artifact $A > $PPL/${M}_${F}_s$S.json"
  done; done; done
  echo "--json eval ppl --window-len 2048 --max-windows 12 --method dense > $PPL/dense.json"
  for L in 1024 2048 4096; do
    echo "--json eval passkey --lengths $L --depths 0.1 0.3 0.5 0.7 0.9 --method dense > $PK/dense_0_$L.json"
    for M in saap kmeans; do for F in 0.05 0.1; do
      A="$ART/saap-c256-pre.safetensors"
      [ $M = kmeans ] && A="$ART/kmeans-c256-pre.safetensors"
      echo "--json eval passkey --lengths $L --depths 0.1 0.3 0.5 0.7 0.9 --method $M --lookup $F --sinks $SINKS \
--window $WINDOW --artifact $A > $PK/${M}_${F}_$L.json"
    done; done
  done
} | OMP_NUM_THREADS=1 xargs -P "$JOBS" -I{} sh -c "\"$BIN\" {} 2>/dev/null"

# 5. The same for the post-RoPE partition at 5% and 10% (dense rows are shared).
PPL_POST="$OUT/saap_post_ppl_runs" PK_POST="$OUT/saap_post_passkey_runs"
mkdir -p "$PPL_POST" "$PK_POST"
cp "$PPL/dense.json" "$PPL_POST/" && cp "$PK"/dense_0_*.json "$PK_POST/"
{
  for M in saap kmeans; do for F in 0.05 0.1; do
    A="$ART/saap-c256-post.safetensors"
    [ $M = kmeans ] && A="$ART/kmeans-c256-post.safetensors"
    for S in 0 1 2 3; do
      echo "--json eval ppl --window-len 2048 --first-window $((S * 3)) --max-windows 3 --method $M --lookup $F \
--sinks $SINKS --window $WINDOW --artifact $A > $PPL_POST/${M}_${F}_s$S.json"
    done
    for L in 1024 2048 4096; do
      echo "--json eval passkey --lengths $L --depths 0.1 0.3 0.5 0.7 0.9 --method $M --lookup $F --sinks $SINKS \
--window $WINDOW --artifact $A > $PK_POST/${M}_${F}_$L.json"
    done
  done; done
} | OMP_NUM_THREADS=1 xargs -P "$JOBS" -I{} sh -c "\"$BIN\" {} 2>/dev/null"

# 6. The tables: results/saap_ppl{,_post}.{json,csv}, results/saap_passkey{,_post}.{json,csv}.
bash scripts/python.sh scripts/saap_tables.py --ppl "$PPL" --passkey "$PK" --out "$OUT"
bash scripts/python.sh scripts/saap_tables.py --ppl "$PPL_POST" --passkey "$PK_POST" --out "$OUT" --suffix _post
