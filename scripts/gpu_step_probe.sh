#!/usr/bin/env bash
# Where the GPU runner's sequential decode step spends its time (issue 14: every sparse perplexity
# position and every H2O prompt token is one step, so the step's wall time sets what the Gemma
# grid costs). One call on the GPU machine, after scripts/gpu_run.sh has built build-cuda:
#   MODEL=/tmp/pieces/model.gguf TEXT=/tmp/pieces/eval.txt ART=/tmp/pieces scripts/gpu_step_probe.sh
# 1. Wall time: `saap eval ppl --device cuda` under each method (every position after the first
#    runs as one decode step, a CUDA graph replay), at WINDOW tokens and batch 1 and BATCH: the
#    step's wall time is seconds / (WINDOW - 1).
# 2. GPU time: Nsight Compute's kernel durations over STEPS decode steps of the Quest and Saap runs
#    (the kernels after the prefill), summed per kernel name: against the wall time it says whether
#    the step is bound by the GPU's work or by what happens between kernels.
# Output: $OUT/step_probe.log (the wall times) and $OUT/step_ncu_<method>.txt.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
MODEL=${MODEL:?the GGUF}
TEXT=${TEXT:?eval.txt}
ART=${ART:-/tmp/pieces}
WINDOW=${WINDOW:-2048}
BATCH=${BATCH:-8}
STEPS=${STEPS:-40}
mkdir -p "$OUT"
log=$OUT/step_probe.log
python3 scripts/provenance.py lines --command "scripts/gpu_step_probe.sh (WINDOW=$WINDOW BATCH=$BATCH STEPS=$STEPS)" > "$log"
methods=(
  "streaming|--method streaming --sinks 4 --window 252"
  "quest|--method quest --budget-tokens 256 --sinks 4 --window 64"
  "saap|--method saap --artifact $ART/saap-c256-pre.safetensors --budget-tokens 256 --sinks 4 --window 64"
  "kmeans|--method kmeans --artifact $ART/kmeans-c256-pre.safetensors --budget-tokens 256 --sinks 4 --window 64"
  "loki|--method loki --artifact $ART/loki-pre.safetensors --k-f 0.05 --d-f 0.25"
  "oracle|--method oracle --lookup 0.05"
  "h2o|--method h2o --lookup 0.05"
)
echo "method,batch,seconds,steps,ms_per_step" >> "$log"
for entry in "${methods[@]}"; do
  name=${entry%%|*}
  args=${entry#*|}
  for b in 1 "$BATCH"; do
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    build-cuda/saap eval ppl --model "$MODEL" --text "$TEXT" --window-len "$WINDOW" --max-windows "$b" --batch "$b" \
      --device cuda $args --out "/tmp/step_probe/${name}_$b" > "$OUT/step_probe_${name}_$b.out" 2>&1 || echo "$name batch $b failed" >> "$log"
    t1=$(date +%s.%N)
    python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); n=int(sys.argv[3])-1; print(f'{sys.argv[4]},{sys.argv[5]},{s:.2f},{n},{1e3*s/n:.3f}')" \
      "$t0" "$t1" "$WINDOW" "$name" "$b" >> "$log"
  done
done
cat "$log"
# GPU time per step: skip the prefill's and the first steps' kernels, profile the next ones.
for entry in "${methods[@]:1:2}"; do
  name=${entry%%|*}
  args=${entry#*|}
  # shellcheck disable=SC2086
  ncu --metrics gpu__time_duration.sum --csv --clock-control none --kernel-name-base function \
    --launch-skip 4000 --launch-count $((STEPS * 400)) \
    build-cuda/saap eval ppl --model "$MODEL" --text "$TEXT" --window-len 512 --max-windows "$BATCH" --batch "$BATCH" \
    --device cuda $args --out "/tmp/step_probe/ncu_$name" > "/tmp/step_ncu_$name.csv" 2>/dev/null || echo "ncu $name rc $?"
  python3 - "/tmp/step_ncu_$name.csv" "$name" > "$OUT/step_ncu_$name.txt" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head, rows = rows[0], rows[1:]
k, v = head.index("Kernel Name"), head.index("Metric Value")
tot, cnt = {}, {}
for r in rows:
    tot[r[k]] = tot.get(r[k], 0.0) + float(r[v].replace(",", ""))
    cnt[r[k]] = cnt.get(r[k], 0) + 1
all_ns = sum(tot.values())
print(f"{sys.argv[2]}: {len(rows)} kernels profiled, {all_ns / 1e3:.1f} us of GPU time")
for name, ns in sorted(tot.items(), key=lambda x: -x[1]):
    print(f"  {name[:70]:70s} n={cnt[name]:5d} {ns / 1e3:10.1f} us ({100 * ns / all_ns:5.1f}%)")
PY
  cat "$OUT/step_ncu_$name.txt"
done
