#!/usr/bin/env bash
# One call on the GPU machine: configure (cuda-only preset: CUDA, CMake, and the header-only deps
# carried in .gpu-deps by scripts/gpu_deps.sh), build, run every CUDA test with SAAP_REQUIRE_GPU=1
# (a skip is a failure), compute-sanitizer memcheck over every CUDA test, the decode benchmark and
# the PyTorch SDPA reference. Logs, JSON and CSV go to $OUT (default ./gpu_out): build.log,
# tests.log, memcheck_<test>.log, memcheck.log (summary), bench.log.
#   scripts/gpu_run.sh [all|test|bench|shapes] [extra decode_bench args...]
# (bench args start with BENCH_DEFAULTS, see below; the caller's own args override them)
# shapes: the bench (default tunings only) over issue 11's head shapes and batches at 128k: GQA
# groups 4, 7, 3, 1 and Gemma-3's 4/1 at d = 256, d = 64 and 128, batch 1, 8 and 32, with SDPA.
# all and bench also profile (PROFILE=0 skips it): scripts/gpu_profile.sh, Nsight Compute per kernel
# of every method and SDPA at 128k and 512k tokens, batch 1 and 8 (summary in $OUT/ncu_profile.md).
# bench also writes decode_report.md
# (scripts/decode_bench_report.py: ours vs SDPA vs the read floor).
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
mode=${1:-all}
shift || true
if [[ $mode == shapes ]]; then
  set -- --shapes 32x8x128,28x4x128,9x3x64,8x8x128,4x1x256 --contexts 131072 --batches 1,8,32 \
    --dense-tunings "" --saap-tunings "" --quest-tunings "" --quest-variants 0 "$@"
  BENCH_DEFAULTS=""
  mode=bench
fi
status=0
# The logs start with their provenance ('# key: value' lines, scripts/provenance.py), so they can be
# kept under results/. This tree may have no .git: the caller passes SAAP_GIT_COMMIT=<sha> (and
# SAAP_GIT_DIRTY=0|1), which the build (src/provenance/build_info.cmake) records too.
if ! git rev-parse HEAD >/dev/null 2>&1 && [ -z "${SAAP_GIT_COMMIT:-}" ]; then
  echo "warning: no git checkout and no SAAP_GIT_COMMIT: every result will record commit 'unknown'"
fi
provenance=$(python3 scripts/provenance.py lines --command "scripts/gpu_run.sh $mode $*" 2>/dev/null || true)
{
  echo "$provenance"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
} > "$OUT/tests.log" 2>&1
if ! { cmake --preset cuda-only && cmake --build build-cuda -j"$(nproc)"; } > "$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"
  exit 1
fi
echo "build ok"
if [[ $mode == all || $mode == test ]]; then
  export SAAP_REQUIRE_GPU=1
  # The model runner's tests need the GGUF (scripts/gpu_runner.sh runs them with it); without
  # SAAP_MODEL_PATH they are left out here rather than failed for a missing input.
  # The same for Gemma-3's runner test and SAAP_GEMMA_PATH (scripts/gpu_gemma.sh runs it).
  model_tests=""
  [[ -z ${SAAP_MODEL_PATH:-} ]] && model_tests="cuda_test_cuda_llama|cuda_test_cuda_sparse|cuda_test_cli_device"
  [[ -z ${SAAP_GEMMA_PATH:-} ]] && model_tests=${model_tests:+$model_tests|}cuda_test_cuda_gemma3
  exclude=()
  if [[ -n $model_tests ]]; then
    exclude=(-E "$model_tests")
    echo "no model for $model_tests: left out (scripts/gpu_runner.sh, scripts/gpu_gemma.sh, scripts/gpu_cli.sh run them with it)" |
      tee -a "$OUT/tests.log"
  fi
  # ctest and memcheck run side by side (one GPU takes both), so the whole test stage lasts about
  # as long as the slowest test under memcheck (at most 240 s).
  (cd build-cuda && ctest -j8 -V --timeout 300 "${exclude[@]}") >> "$OUT/tests.log" 2>&1 &
  ctest_pid=$!
  # memcheck over every CUDA test, eight at a time; each writes its own log, which names the seed
  # for a rerun. Exit 77 under memcheck is a test that skipped for a missing input (SAAP_REQUIRE_GPU
  # fails the ctest run if the GPU itself is missing).
  # cuda_test_cli_device drives the saap CLI (CPU and GPU runs of whole commands): its kernels are
  # the runner's, covered by cuda_test_cuda_llama, and under memcheck it would outlast the limit.
  # SAAP_TEST_QUICK=1: a test that runs the model (cuda_test_cuda_sparse) takes shorter sequences.
  tests=$(ls build-cuda/tests/cuda_test_* | xargs -n1 basename | grep -vx cuda_test_cli_device)
  [[ -n $model_tests ]] && tests=$(printf '%s\n' $tests | grep -vxE "$model_tests")
  echo "$provenance" > "$OUT/memcheck.log"
  printf '%s\n' $tests | xargs -P8 -I{} bash -c \
    'SAAP_TEST_QUICK=1 timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 build-cuda/tests/{} > "$0/memcheck_{}.log" 2>&1; echo "{} rc=$?" >> "$0/memcheck.log"' "$OUT"
  wait $ctest_pid || status=1
  grep -E "seed=|passed, .* failed|tests passed|Failed|\*\*\*" "$OUT/tests.log"
  for t in $tests; do
    rc=$(grep -E "^$t rc=" "$OUT/memcheck.log" | sed 's/.*rc=//')
    summary=$(grep -E "ERROR SUMMARY" "$OUT/memcheck_$t.log" | tail -1)
    echo "memcheck $t: rc=$rc $summary"
    [[ $rc == 0 || $rc == 77 ]] || status=1
  done
fi
if [[ $mode == all || $mode == bench ]]; then
  # Issue 11's rows come with every run: Gemma-3's head shape (4 query heads over one KV head of 256)
  # at 128k beside the default shape, and Saap on real partition sizes beside the lognormal model.
  # The caller's arguments follow, so theirs win; BENCH_DEFAULTS="" drops these.
  read -r -a defaults <<< "${BENCH_DEFAULTS---shapes 32x8x128,4x1x256 --other-contexts 131072 --partition-sizes bench/cuda/partition_sizes_smollm2_c256.csv}"
  set -- ${defaults[@]+"${defaults[@]}"} "$@"
  # SDPA measures the contexts, batches and shapes decode_bench is given (its other options are its own).
  sdpa_args=()
  args=("$@")
  for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
      --contexts|--batches|--shapes|--reps) sdpa_args+=("${args[i]}" "${args[i+1]}"); i=$((i + 1)) ;;
    esac
  done
  build-cuda/bench/decode_bench --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log" || status=1
  PYTHONUNBUFFERED=1 python3 bench/cuda/sdpa_bench.py --out "$OUT/sdpa_bench.json" ${sdpa_args[@]+"${sdpa_args[@]}"} 2>&1 | tee -a "$OUT/bench.log" || status=1
  python3 scripts/decode_bench_report.py --bench "$OUT/decode_bench.json" --sdpa "$OUT/sdpa_bench.json" \
    --out "$OUT/decode_report.md" > /dev/null || status=1
fi
# Issue 11: the profile comes with every bench run where ncu exists (PROFILE=0 skips it); a
# failed profile is reported, not the run's failure.
if [[ ${PROFILE:-$([[ $mode == all || $mode == bench ]] && command -v ncu >/dev/null && echo 1 || echo 0)} == 1 ]]; then
  OUT=$OUT scripts/gpu_profile.sh
fi
exit $status
