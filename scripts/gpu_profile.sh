#!/usr/bin/env bash
# Nsight Compute per kernel of every method's decode step (issue 11's profiles), after a build in
# build-cuda: dense, Saap 5%, Quest at 1024 tokens, Loki ((0.25, 0.25) and (0.125, 0.125)) and
# PyTorch SDPA, 32x8x128 bf16, at the contexts and batches given (default 128k and 512k, batch 1
# and 8). Per kernel: time, DRAM throughput and bytes read, SM throughput, warps active, grid,
# registers, and where its warps wait (WarpStateStats: the largest stall reasons, in cycles per
# issued instruction). Caches are flushed before each kernel (ncu's default), as the bench
# flushes the L2; the clocks are the bench's (--clock-control none).
#   scripts/gpu_profile.sh [contexts (131072,524288)] [batches (1,8)]
# Writes $OUT/ncu_<method>_b<batch>_<context>.csv (ncu's raw page) and the summary
# $OUT/ncu_profile.md (scripts/ncu_summary.py). A run that fails is named in the summary.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
contexts=${1:-131072,524288}
batches=${2:-1,8}
sections=(--section SpeedOfLight --section WarpStateStats --section LaunchStats --section Occupancy
  --metrics dram__bytes_read.sum)
ncu_run() {  # ncu_run <csv> <kernel regex> <launch count> <command...>
  local csv=$1 regex=$2 count=$3
  shift 3
  # The CSV goes to --log-file; the program's own output to <csv>.log.
  timeout 150 ncu "${sections[@]}" --csv --page raw --log-file "$csv" --clock-control none \
    --kernel-name-base demangled --kernel-name regex:"$regex" --launch-count "$count" "$@" > "${csv%.csv}.log" 2>&1 ||
    echo "ncu failed (rc $?): $*" >> "$OUT/ncu_failures.txt"
}
# The decode step's kernels (the methods' appends, selects, attends and combines), not the bench's
# own (fills, L2 flush, read kernel) nor the builds.
# Matched against the demangled name: radix_topk's kernels by their namespace.
ours="dense_decode|combine_splits|saap_(append|classify|select|decode)|quest_(append|score|select|attend)|loki_(rotate|advance|append)|per_head_|union_|radix_topk::"
# Each method's bench arguments, and the launches profiled (--reps 1: enough for every kernel of the
# step a few times, plain and in the graph).
declare -A count=([dense]=40 [saap]=150 [quest]=150 [loki]=80)
declare -A args=(
  [dense]="--methods dense --dense-tunings ''"
  [saap]="--methods saap --saap-budgets 0.05 --saap-tunings ''"
  [quest]="--methods quest --quest-budgets 1024 --quest-tunings '' --quest-variants 0"
  [loki]="--methods loki"
)
for ctx in ${contexts//,/ }; do
  for b in ${batches//,/ }; do
    for m in dense saap quest loki; do
      eval "extra=(${args[$m]})"
      ncu_run "$OUT/ncu_${m}_b${b}_${ctx}.csv" "$ours" "${count[$m]}" \
        build-cuda/bench/decode_bench --contexts "$ctx" --batches "$b" --shapes 32x8x128 --reps 1 --out /tmp "${extra[@]}"
    done
    ncu_run "$OUT/ncu_sdpa_b${b}_${ctx}.csv" "flash|fmha|attention|sdpa|cudnn|splitkv|xmma|cutlass" 8 \
      python3 -c "
import torch, torch.nn.functional as F
q = torch.randn($b, 32, 1, 128, device='cuda', dtype=torch.bfloat16)
k = torch.randn($b, 8, $ctx, 128, device='cuda', dtype=torch.bfloat16)
v = torch.randn_like(k)
for _ in range(4):
    F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
torch.cuda.synchronize()"
  done
done
python3 scripts/ncu_summary.py --out "$OUT/ncu_profile.md" "$OUT"/ncu_*_b*_*.csv
[[ -f $OUT/ncu_failures.txt ]] && cat "$OUT/ncu_failures.txt" | tee -a "$OUT/ncu_profile.md"
exit 0
