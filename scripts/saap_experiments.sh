#!/usr/bin/env bash
# Reproduces results/saap_*: calibration on calib.txt, Saap + symmetric k-means training, and the
# evaluation on eval.txt (attention metrics at equal measured KV fraction, perplexity, passkey).
# Usage: scripts/saap_experiments.sh [build dir]   (CPU only; tens of minutes on 2 cores)
set -euo pipefail
BIN=${1:-build}/saap
CAL=~/.cache/saap/calib/calib-16x2048-q384.safetensors
ART=~/.cache/saap/calib
OUT=results
SINKS=4 WINDOW=16
mkdir -p "$ART" "$OUT"

# 1. Calibration set (calib.txt, never eval.txt): 16 windows x 2048 tokens, 384 queries per window
#    drawn with density proportional to position (long prefixes).
[ -f "$CAL" ] || nice "$BIN" calibrate --windows 16 --window-len 2048 --queries 384 --seed 1 --out "$CAL"

# 2. Training: the partition (spherical k-means, C per KV head) and the routers, pre- and post-RoPE.
#    Labels leave out the same sinks and window that decode reads anyway.
for ROPE in pre post; do
  nice "$BIN" --json train saap --calib "$CAL" --out "$ART/saap-c256-$ROPE.safetensors" --partitions 256 \
    --rope $ROPE --hidden 128 --epochs 20 --patience 3 --sinks $SINKS --window $WINDOW --seed 1 \
    > "$OUT/saap_train_c256_$ROPE.json"
done

# 3. Attention metrics on eval.txt, all methods on identical activations, measured KV fractions.
nice "$BIN" eval saap-grid --windows 2 --window-len 2048 --queries 64 --sinks $SINKS --window $WINDOW \
  --fractions 0.02 0.05 0.1 0.2 \
  --run saap-pre=saap:"$ART/saap-c256-pre.safetensors" --run kmeans-pre=kmeans:"$ART/saap-c256-pre.safetensors" \
  --run saap-post=saap:"$ART/saap-c256-post.safetensors" --run kmeans-post=kmeans:"$ART/saap-c256-post.safetensors" \
  --run oracle=oracle: --out "$OUT" --stem saap_attention
