#!/usr/bin/env bash
# Soak under ASan + UBSan (the asan preset): every registered method generates until the cache
# holds the model's full context (8192 tokens for SmolLM2), never stopping at end-of-generation;
# then a multi-turn chat extends one session's cache turn after turn, with dense and with Saap,
# and is repeated on the same session to check that the live heap stays flat. Any leak
# (LeakSanitizer at exit), overflow, UB or error fails the run. Too slow for CI (hours on 2 cores).
#
#   scripts/soak.sh                     # full: 8192 tokens a method, 12 turns of 256 reply tokens
#   scripts/soak.sh --short             # 1024 tokens a method, 3 turns of 32 reply tokens
#   scripts/soak.sh --tokens 2048 --turns 4 --reply-tokens 64 --methods "dense saap"
#
# The indexes that loki, kmeans, saap and partition-oracle need are trained once with the Release
# CLI (small: 2 x 1024 calibration tokens, C = 64) into $SAAP_CACHE/soak/. The result goes to
# results/soak_<UTC date>.json (provenance: date, machine, commit, command, the indexes; per
# phase: seconds, tokens, peak RSS, live heap checkpoints, exit status), written atomically.
set -euo pipefail
cd "$(dirname "$0")/.."
command_line="scripts/soak.sh $*"
tokens=8192 turns=12 reply_tokens=256 methods="" lookup=0.25 out=results
while (($#)); do
  case "$1" in
    --short) tokens=1024 turns=3 reply_tokens=32; shift ;;
    --tokens) tokens="$2"; shift 2 ;;
    --turns) turns="$2"; shift 2 ;;
    --reply-tokens) reply_tokens="$2"; shift 2 ;;
    --methods) methods="$2"; shift 2 ;;
    --lookup) lookup="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "soak.sh: unknown option $1 (see the header of scripts/soak.sh)" >&2; exit 2 ;;
  esac
done

cmake --preset asan >/dev/null
cmake --build --preset asan -j"$(nproc)" --target saap_soak
soak=build-asan/tests/saap_soak
[ -n "$methods" ] || methods="$("$soak" methods | tr '\n' ' ')"

artifacts="${SAAP_CACHE:-$HOME/.cache/saap}/soak"
needs_artifacts=0
for m in $methods; do case "$m" in loki|kmeans|saap|partition-oracle) needs_artifacts=1 ;; esac; done
if ((needs_artifacts)) && [ ! -f "$artifacts/saap.safetensors" ]; then
  echo "soak.sh: training the small indexes into $artifacts" >&2
  cmake --preset default >/dev/null
  cmake --build --preset default -j"$(nproc)" --target saap
  mkdir -p "$artifacts"
  ./build/saap calibrate --windows 2 --window-len 1024 --out "$artifacts/calib.safetensors"
  ./build/saap train loki --calib "$artifacts/calib.safetensors" --rope pre --out "$artifacts/loki.safetensors"
  ./build/saap train kmeans --calib "$artifacts/calib.safetensors" --partitions 64 --out "$artifacts/kmeans.safetensors"
  ./build/saap train saap --calib "$artifacts/calib.safetensors" --partitions 64 \
    --partition-from "$artifacts/kmeans.safetensors" --epochs 3 --out "$artifacts/saap.safetensors"
fi
artifact_of() {
  case "$1" in
    loki) echo "$artifacts/loki.safetensors" ;;
    saap) echo "$artifacts/saap.safetensors" ;;
    kmeans|partition-oracle) echo "$artifacts/kmeans.safetensors" ;;
  esac
}

# LeakSanitizer runs at exit; UBSan stops at the first finding; a small quarantine keeps the
# resident set close to what the program holds.
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:quarantine_size_mb=64:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:${UBSAN_OPTIONS:-}"
mkdir -p "$out"
result="$out/soak_$(date -u +%Y-%m-%d).json"
# Rewrites the results file (atomically) from the phases done so far, so that a soak stopped
# midway still leaves a valid record of what it ran.
write_results() {
  bash scripts/python.sh - "$work" "$result" "$command_line" "$tokens" "$turns" "$reply_tokens" "$lookup" \
    "$artifacts" <<'PY'
import json, os, sys
sys.path.insert(0, "scripts")
import provenance
work, result, command, tokens, turns, reply, lookup, artifacts = sys.argv[1:9]
phases = []
for name in sorted(f[:-7] for f in os.listdir(work) if f.endswith(".status")):
    entry = json.load(open(os.path.join(work, name + ".status")))
    text = open(os.path.join(work, name + ".json")).read().strip()
    if text:
        entry.update(json.loads(text.splitlines()[-1]))
    if entry["exit"] != 0:
        entry["error_tail"] = open(os.path.join(work, name + ".err")).read()[-4000:]
    phases.append(entry)
inputs = [provenance.input_file("artifact", os.path.join(artifacts, f))
          for f in ("loki.safetensors", "kmeans.safetensors", "saap.safetensors")
          if os.path.isfile(os.path.join(artifacts, f))]
prov = provenance.collect(inputs)
prov["command"] = command  # the script's command line, not this helper's
prov["machine"]["load_average_1m_at_write"] = os.getloadavg()[0]
doc = {
    "provenance": prov,
    "build": "asan preset (ASan + UBSan, RelWithDebInfo), ASAN_OPTIONS=" + os.environ.get("ASAN_OPTIONS", ""),
    "settings": {"tokens_per_method": int(tokens), "chat_turns": int(turns), "reply_tokens": int(reply),
                 "lookup": float(lookup)},
    "phases": phases,
}
tmp = result + ".tmp"
with open(tmp, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
os.replace(tmp, result)  # atomic: a crash never leaves a half-written results file
print(f"soak.sh: wrote {result}", file=sys.stderr)
PY
}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
# phase <name> <saap_soak arguments...>: runs one phase, keeps its JSON (or its error) in $work.
phase() {
  local name="$1"; shift
  local args=("$@") a
  a="$(artifact_of "${args[2]}")"
  [ -z "$a" ] || args+=(--artifact "$a")
  echo "soak.sh: $name: $soak ${args[*]}" >&2
  local rc=0 start=$SECONDS
  "$soak" "${args[@]}" --lookup "$lookup" > "$work/$name.json" 2> "$work/$name.err" || rc=$?
  echo "{\"phase\": \"$name\", \"exit\": $rc, \"wall_seconds\": $((SECONDS - start))}" > "$work/$name.status"
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$work/$name.err" >&2
    echo "soak.sh: $name FAILED (exit $rc)" >&2
    failed=1
  else
    echo "soak.sh: $name ok ($((SECONDS - start)) s)" >&2
  fi
  write_results
}
for m in $methods; do phase "generate_$m" generate --method "$m" --tokens "$tokens"; done
for m in dense saap; do
  case " $methods " in *" $m "*) phase "chat_$m" chat --method "$m" --turns "$turns" --reply-tokens "$reply_tokens" ;; esac
done

exit "$failed"
