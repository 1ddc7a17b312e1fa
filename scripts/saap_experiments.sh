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
    --rope $ROPE --hidden 128 --epochs 8 --patience 2 --sinks $SINKS --window $WINDOW --min-prefix 256 \
    --max-queries 4000 --kmeans-iters 15 --seed 1 \
    > "$OUT/saap_train_c256_$ROPE.json"
done

# 3. Attention metrics on eval.txt, all methods on identical activations, measured KV fractions.
PRE="$ART/saap-c256-pre.safetensors" POST="$ART/saap-c256-post.safetensors"
nice "$BIN" eval saap-grid --windows 1 --window-len 2048 --queries 96 --sinks $SINKS --window $WINDOW \
  --fractions 0.02 0.05 0.1 0.2 --run saap-pre=saap:"$PRE" --run kmeans-pre=kmeans:"$PRE" --run oracle=oracle: \
  --out "$OUT" --stem saap_attention
nice "$BIN" eval saap-grid --windows 1 --window-len 2048 --queries 96 --sinks $SINKS --window $WINDOW --fractions 0.05 \
  --run saap-post=saap:"$POST" --run kmeans-post=kmeans:"$POST" --out "$OUT" --stem saap_attention_post

# 4. Perplexity (every position through the method) and passkey, each method at each fraction.
nice "$BIN" --json eval ppl --window-len 2048 --max-windows 4 --method dense > "$OUT/saap_ppl_dense.json"
for F in 0.02 0.05 0.1 0.2; do for M in saap kmeans; do
  nice "$BIN" --json eval ppl --window-len 2048 --max-windows 2 --method $M --lookup $F --sinks $SINKS --window $WINDOW \
    --artifact "$PRE" > "$OUT/saap_ppl_${M}-pre_$F.json"
done; done
for M in saap kmeans; do
  nice "$BIN" --json eval ppl --window-len 2048 --max-windows 1 --method $M --lookup 0.05 --sinks $SINKS --window $WINDOW \
    --artifact "$POST" > "$OUT/saap_ppl_${M}-post_0.05.json"
done
nice "$BIN" --json eval passkey --lengths 1024 2048 --depths 0.25 0.75 --method dense --out /tmp/saap_pk_dense
for M in saap kmeans; do
  nice "$BIN" --json eval passkey --lengths 1024 2048 --depths 0.25 0.75 --method $M --lookup 0.1 --sinks $SINKS \
    --window $WINDOW --artifact "$PRE" --out /tmp/saap_pk_$M
done
