#!/usr/bin/env bash
# Runs the GGUF reader's libFuzzer target for a bounded time (default 60 s) under ASan/UBSan.
# Seeds: tiny valid files of every quant type (written by gguf-py) and the first 64 KiB of the
# default model. Exits non-zero on any finding; the crashing input is kept under
# build-fuzz/fuzz-artifacts/. Build first:
#   cmake --preset fuzz && cmake --build --preset fuzz --target fuzz_gguf
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
bin="${SAAP_FUZZ_BIN:-build-fuzz/tests/fuzz/fuzz_gguf}"
if [ ! -x "$bin" ]; then
  echo "run_fuzz.sh: $bin not built (cmake --preset fuzz && cmake --build --preset fuzz --target fuzz_gguf)" >&2
  exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/seeds" "$work/corpus"
bash scripts/python.sh scripts/reference_gguf.py tiny "$work/seeds"
if model="$(bash scripts/python.sh scripts/find_model.py 2>/dev/null)" && [ -f "$model" ]; then
  head -c 65536 "$model" > "$work/seeds/model_head.gguf"
fi
artifacts="$(realpath -m "$(dirname "$bin")/../../fuzz-artifacts")"
mkdir -p "$artifacts"
log="$work/fuzz.log"
echo "run_fuzz.sh: fuzzing the GGUF reader for ${seconds} s ($(ls "$work/seeds" | wc -l) seeds)" >&2
set +e
"$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$artifacts/" "$work/corpus" "$work/seeds" > "$log" 2>&1
rc=$?
set -e
runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
if [ "$rc" -ne 0 ]; then
  tail -n 60 "$log"
  echo "run_fuzz.sh: FAILED (exit $rc) after ${runs} inputs; crashing input in $artifacts/" >&2
  exit 1
fi
cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)"
echo "run_fuzz.sh: fuzz_gguf ran ${runs} inputs in ${seconds} s (${cov}, corpus $(ls "$work/corpus" | wc -l) files), no crash"
