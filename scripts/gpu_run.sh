#!/usr/bin/env bash
# One call on the GPU machine: configure (cuda-only preset: CUDA + CMake alone), build, run the
# CUDA tests, compute-sanitizer memcheck on small end-to-end cases, the decode benchmark and the
# PyTorch SDPA reference. Logs, JSON and CSV go to $OUT (default ./gpu_out).
#   scripts/gpu_run.sh [all|test|bench] [extra decode_bench args...]
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
mode=${1:-all}
shift || true
status=0
{
  date -u
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
} > "$OUT/tests.log" 2>&1
if ! { cmake --preset cuda-only && cmake --build build-cuda -j"$(nproc)"; } > "$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"
  exit 1
fi
echo "build ok"
if [[ $mode == all || $mode == test ]]; then
  (cd build-cuda && ctest -j6 --output-on-failure --timeout 300) >> "$OUT/tests.log" 2>&1 || status=1
  grep -E "passed, .* failed|tests passed|Failed|\*\*\*" "$OUT/tests.log"
  for t in saap_decode loki dense_decode; do
    echo "== memcheck cuda_test_$t" >> "$OUT/memcheck.log"
    compute-sanitizer --tool memcheck --error-exitcode 9 "build-cuda/tests/cuda_test_$t" >> "$OUT/memcheck.log" 2>&1 \
      || { status=1; echo "memcheck cuda_test_$t FAILED"; }
  done
  grep -E "ERROR SUMMARY|passed, .* failed" "$OUT/memcheck.log"
fi
if [[ $mode == all || $mode == bench ]]; then
  build-cuda/bench/decode_bench --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log" || status=1
  PYTHONUNBUFFERED=1 python3 bench/cuda/sdpa_bench.py --out "$OUT/sdpa_bench.json" 2>&1 | tee -a "$OUT/bench.log" || status=1
fi
exit $status
