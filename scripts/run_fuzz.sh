#!/usr/bin/env bash
# Runs the libFuzzer targets of every parser for a bounded time each (default 45 s) under
# ASan/UBSan, as many at once as there are cores:
#   fuzz_gguf           the GGUF reader, dequantization, and the tokenizer metadata it holds
#   fuzz_safetensors    the artifact reader (header JSON, dtypes, shapes, offsets, saap header)
#   fuzz_tokenizer      encode/decode with the default model's vocabulary (round trip checked)
#   fuzz_chat_template  the chat template text and the messages rendered with it
# Seeds: tests/fuzz/corpus/<target>/ (tests/fuzz/make_corpus.py), plus the first 64 KiB of the
# default model for fuzz_gguf; dictionaries: tests/fuzz/<target>.dict. Exits non-zero on any
# finding; the crashing input is kept under build-fuzz/fuzz-artifacts/. Build first:
#   cmake --preset fuzz && cmake --build --preset fuzz --target fuzz_gguf fuzz_safetensors fuzz_tokenizer fuzz_chat_template
# Usage: scripts/run_fuzz.sh [seconds per target] [target ...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-45}"
shift || true
targets=("$@")
((${#targets[@]})) || targets=(fuzz_gguf fuzz_safetensors fuzz_tokenizer fuzz_chat_template)
bin_dir="${SAAP_FUZZ_BIN_DIR:-build-fuzz/tests/fuzz}"
for t in "${targets[@]}"; do
  if [ ! -x "$bin_dir/$t" ]; then
    echo "run_fuzz.sh: $bin_dir/$t not built (cmake --preset fuzz && cmake --build --preset fuzz --target $t)" >&2
    exit 2
  fi
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
artifacts="$(realpath -m "$bin_dir/../../fuzz-artifacts")"
mkdir -p "$artifacts"

# fuzz <target>: runs one target; its log goes to $work/<target>.log, its exit status is returned.
fuzz() {
  local t="$1" seeds="tests/fuzz/corpus/$1" extra=()
  mkdir -p "$work/$t/corpus" "$work/$t/seeds"
  if [ "$t" = fuzz_gguf ]; then
    if model="$(bash scripts/python.sh scripts/find_model.py 2>/dev/null)" && [ -f "$model" ]; then
      head -c 65536 "$model" > "$work/$t/seeds/model_head.gguf"
    fi
  fi
  [ -f "tests/fuzz/$t.dict" ] && extra+=(-dict="tests/fuzz/$t.dict")
  "$bin_dir/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${extra[@]}" -artifact_prefix="$artifacts/$t-" "$work/$t/corpus" "$seeds" "$work/$t/seeds" \
    > "$work/$t.log" 2>&1
}

jobs_max="$(nproc)"
echo "run_fuzz.sh: ${targets[*]} for ${seconds} s each, ${jobs_max} at a time" >&2
declare -A pid_of
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || true; done
  fuzz "$t" &
  pid_of[$t]=$!
done
failed=0
for t in "${targets[@]}"; do
  rc=0
  wait "${pid_of[$t]}" || rc=$?
  log="$work/$t.log"
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
  if [ "$rc" -ne 0 ]; then
    tail -n 60 "$log"
    echo "run_fuzz.sh: $t FAILED (exit $rc) after ${runs} inputs; crashing input in $artifacts/$t-*" >&2
    failed=1
    continue
  fi
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)"
  echo "run_fuzz.sh: $t ran ${runs} inputs in ${seconds} s (${cov}, corpus $(ls "$work/$t/corpus" | wc -l) new files), no crash"
done
exit "$failed"
