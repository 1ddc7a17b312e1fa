#!/usr/bin/env bash
# Long-context calibration and training for Gemma-3-270M (issue 14, item 3): Saap, symmetric k-means
# and Loki fitted on 32k-token windows of calib.txt (never eval.txt). Only the global layers (5, 11,
# 17; 1 KV head, d = 256) get a sparse method, so the partitions and routers cover those; Loki's
# PCA is cheap and covers every layer (its artifact format is per layer).
# Usage: scripts/gemma_longctx_train.sh [build dir] [artifact dir] [calibration set]
#   (a calibration set given, e.g. a 1 x 16384 capture, is used as it is; else 3 x 32768 is captured)
# Writes the artifacts to the artifact dir (default /tmp/gemma_art) and, under results/, each
# step's --json output (with provenance) and the table of training times
# (results/gemma3_<calibration>_train_<date>.{json,csv}, scripts/gemma_train_table.py).
# On 2 shared cores: the capture of 3 x 32768 tokens takes ~20 CPU-minutes; k-means, routers and PCA a few.
set -euo pipefail
BIN=$(realpath "${1:-build}")/saap
ART=${2:-/tmp/gemma_art}
OUT=results
DAY=$(date -u +%F)
WINDOWS=3 LEN=32768 QUERIES=2048
CAL=${3:-"$ART/calib-${WINDOWS}x32k.safetensors"}
TAG=$(basename "$CAL" .safetensors)  # names the results of this set
LAYERS="5 11 17"
SINKS=4 WINDOW=64  # what the labels leave out; evaluate with the same --sinks/--window
mkdir -p "$ART" "$OUT"
export OMP_WAIT_POLICY=passive

# 1. Calibration: 3 windows of 32768 tokens from evenly spaced offsets of calib.txt (BOS first), 2048
#    queries per window drawn with density proportional to position.
[ -f "$CAL" ] || "$BIN" --json calibrate --model gemma3 --windows $WINDOWS --window-len $LEN --queries $QUERIES --seed 1 \
  --out "$CAL" > "$OUT/gemma3_${TAG}_$DAY.json"

# 2. Per C: the partition (k-means alone: the symmetric baseline), then Saap's routers on that very
#    partition (--partition-from; the run stops if a layer did not take it).
for C in 1024 256; do
  km="$ART/gemma3-$TAG-kmeans-c$C.safetensors" saap="$ART/gemma3-$TAG-saap-c$C.safetensors"
  "$BIN" --json train kmeans --calib "$CAL" --out "$km" --partitions $C --rope pre --kmeans-iters 15 --seed 1 \
    --layers $LAYERS > "$OUT/gemma3_${TAG}_train_kmeans_c${C}_$DAY.json"
  "$BIN" --json train saap --calib "$CAL" --out "$saap" --partition-from "$km" --partitions $C --rope pre \
    --hidden 128 --epochs 30 --patience 3 --sinks $SINKS --window $WINDOW --min-prefix 1024 --max-queries 0 --seed 1 \
    --layers $LAYERS > "$OUT/gemma3_${TAG}_train_saap_c${C}_$DAY.json"
  python3 - "$saap" <<'PY'
import json, struct, sys
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]
h = json.loads(list(json.loads(f.read(n))["__metadata__"].values())[0])
given, layers = h["train"]["options"]["given_partition_layers"], len(h["layers"])
if given != layers:
    sys.exit(f"{sys.argv[1]}: Saap took {given} of {layers} layers' partition from its k-means artifact")
PY
done

# 3. Loki: PCA of the pre-RoPE keys per layer (pre-RoPE: the choice measured on SmolLM2).
"$BIN" --json train loki --calib "$CAL" --rope pre --out "$ART/gemma3-$TAG-loki-pre.safetensors" \
  > "$OUT/gemma3_${TAG}_train_loki_pre_$DAY.json"

# 4. The table of training times and held-out statistics.
python3 scripts/gemma_train_table.py --out "$OUT/gemma3_${TAG}_train_$DAY" \
  "$ART/gemma3-$TAG"-saap-c1024.safetensors "$ART/gemma3-$TAG"-kmeans-c1024.safetensors \
  "$ART/gemma3-$TAG"-saap-c256.safetensors "$ART/gemma3-$TAG"-kmeans-c256.safetensors \
  "$ART/gemma3-$TAG"-loki-pre.safetensors
ls -l "$ART"
