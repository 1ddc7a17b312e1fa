#!/usr/bin/env bash
# Shows that the tests can fail where it matters: applies each mutation below to the real source
# file (a trap restores it), rebuilds only the test targets that file feeds, in the default build
# directory, and requires a failing test ASSERTION per mutation. A crash is reported as
# "killed (crashed)" and counts as a failure of the check: a wrong rule must be caught by a test
# that compares against a reference, not by luck. At the end the restored sources are rebuilt, so
# the build directory holds what the tree holds.
#
# Usage: scripts/mutation_check.sh [BUILD_DIR]   (default: build, configured by scripts/build.sh)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
jobs=${SAAP_MUTATION_JOBS:-$(nproc)}
[ -f "$build/build.ninja" ] || { echo "mutation check: no build in $build (run scripts/build.sh first)"; exit 2; }

rules=include/saap/core/selection_rules.h
saap=src/methods/saap.cpp
method=src/methods/method.cpp
attention=src/kernels/cpu/attention.cpp
quest_select=include/saap/kernels/cuda/quest_select.cuh
quest_fused=include/saap/kernels/cuda/quest_fused_select.cuh

# name # file # test targets (space separated) # sed expression
mutations=(
  "dense: GQA head mapping off by one#$attention#test_kernels_cpu#s/accumulate<T>(kv, head, q + int64_t(head) \* group \* D/accumulate<T>(kv, (head + 1) % kv.n_kv_heads, q + int64_t(head) * group * D/"
  "kmeans: farthest centroid instead of nearest#$saap#test_methods#s/if (s > best_score) best_score = s, best = c;/if (s < best_score || c == 0) best_score = s, best = c;/"
  "GQA: only the first head of a group reads the union#$saap#test_methods#s/for (int g = 1; g < group; ++g) sel.positions\[size_t(kvh \* group + g)\] = out;/(void)0;/"
  "GQA: round-robin merge uses one head's ranking#$saap#test_methods#s/const int32_t c = order_\[size_t(int64_t(g) \* C + r)\];/const int32_t c = order_[size_t(r)];/"
  "GQA: bytes counted for one head, not the union#$method#test_methods#s/for (int g = 0; g < group; ++g) {/for (int g = 0; g < 1; ++g) {/"
  "dense: softmax scale off by 1%#$attention#test_kernels_cpu#s/scores\[g\]\[j\] = dot \* scale;/scores[g][j] = dot * scale * 1.01f;/"
  "dense: one key dropped#$attention#test_kernels_cpu#s/pos0 + row + 1, \[\]/pos0 + row, []/"
  "dense: the last split not merged#$attention#test_kernels_cpu#s/for (int64_t s = 1; s < n_splits; ++s) total.merge/for (int64_t s = 1; s < n_splits - 1; ++s) total.merge/"
  "saap: group keys by max instead of sum#$rules#test_core test_methods#s/  return top + logf(sum);/  return top;/"
  "saap: no per-head normalisation#$rules#test_core test_methods#s/s\[g \* stride\] - lse\[g\]/s[g * stride]/g"
  "saap: no count term in the normaliser#$rules#test_core test_methods#s/return count > 0 ? double(count) \* exp(/return count > 0 ? exp(/"
  "budget: ceil -> floor#$rules#test_core test_methods#s/const double want = ceil(lookup \* double(n) - 1e-9);/const double want = floor(lookup * double(n) + 1e-9);/"
  "fill: skip-and-continue -> stop at first misfit#$rules#test_core test_methods#s/if (n <= 0 || used + n > budget) continue;/if (n <= 0) continue; if (used + n > budget) break;/"
  "fixed reads: window may overlap the sinks#$rules#test_core test_methods#s/f.window_begin = w > f.sink_end ? w : f.sink_end;/f.window_begin = w > 0 ? w : 0;/"
  "loki: rank ceil -> floor#$rules#test_core test_methods#s/const int64_t r = tokens_for_fraction(d_f, head_dim);/const int64_t r = int64_t(d_f * head_dim);/"
  "loki: top-k count ceil -> floor#$rules#test_core test_methods#s/SAAP_HD inline int64_t loki_keys(double k_f, int64_t n) { return loki_budget(k_f).topk(n); }/SAAP_HD inline int64_t loki_keys(double k_f, int64_t n) { const int64_t k = int64_t(k_f * double(n)); return k < 1 ? 1 : k; }/"
  "order: ties to the higher id#$rules#test_core test_methods#s/(key_a == key_b && id_a < id_b)/(key_a == key_b \&\& id_a > id_b)/"
  "quest GPU select: one tied page too many taken#$quest_select#test_kernels_cpu#s/(o++) < need/(o++) <= need/"
  "quest GPU select: the K-th key's last 5 bits not fixed#$quest_select#test_kernels_cpu#s/for (int pass = 0; pass < 2 && take_some/for (int pass = 0; pass < 1 \&\& take_some/"
  "quest fused select: the K-th candidate one too far#$quest_fused#test_kernels_cpu#s/c_K = c_sorted\[need - 1\];/c_K = c_sorted[need < at ? need : need - 1];/"
  "quest fused select: the cut among ties past the need-th#$quest_fused#test_kernels_cpu#s/        \*r_out = r;/        *r_out = r + 16;/"
)

backup=$(mktemp -d)
current=""
restore() {
  # A fresh mtime, so that the next build recompiles what the mutation left behind.
  if [ -n "$current" ]; then cp "$backup/file" "$root/$current"; current=""; fi
}
trap 'restore; rm -rf "$backup"' EXIT
trap 'restore; echo "mutation check interrupted: sources restored; rebuild with cmake --build $build"; exit 130' INT TERM

start=$(date +%s)
# Baseline: without a mutation every target builds and passes, so a failure below is the mutation's.
all_targets=$(for e in "${mutations[@]}"; do IFS='#' read -r _ _ t _ <<<"$e"; echo "$t"; done | tr ' ' '\n' | sort -u | tr '\n' ' ')
# shellcheck disable=SC2086
cmake --build "$build" -j"$jobs" --target $all_targets >"$backup/build.log" 2>&1 ||
  { echo "mutation check: the unmutated tree does not build:"; tail -20 "$backup/build.log"; exit 1; }
for t in $all_targets; do
  ("$build/tests/$t" --gtest_brief=1 >"$backup/test.log" 2>&1) 2>>"$backup/test.log" ||
    { echo "mutation check: $t fails without a mutation:"; tail -20 "$backup/test.log"; exit 1; }
done
bad=0
touched_targets=""
printf '%-55s %s\n' "mutation" "result"
for entry in "${mutations[@]}"; do
  IFS='#' read -r name file targets expr <<<"$entry"
  cp -p "$root/$file" "$backup/file"
  current=$file
  sed -i "$expr" "$root/$file"
  if cmp -s "$backup/file" "$root/$file"; then
    restore
    printf '%-55s %s\n' "$name" "NOT APPLIED (the sed expression matches nothing: update it)"
    bad=1
    continue
  fi
  touched_targets="$touched_targets $targets"
  # shellcheck disable=SC2086
  if ! cmake --build "$build" -j"$jobs" --target $targets >"$backup/build.log" 2>&1; then
    restore
    printf '%-55s %s\n' "$name" "BUILD FAILED (see below)"
    tail -5 "$backup/build.log"
    bad=1
    continue
  fi
  killers="" crashed=""
  for t in $targets; do
    # In a subshell, so that a crash's "Segmentation fault" goes to the log, not to the terminal.
    ("$build/tests/$t" --gtest_brief=1 >"$backup/test.log" 2>&1) 2>>"$backup/test.log"
    rc=$?
    if [ "$rc" -eq 1 ]; then
      first=$(grep -m1 -o '^\[  FAILED  \] [A-Za-z0-9_./]*' "$backup/test.log" | sed 's/^\[  FAILED  \] //')
      n=$(grep -o '^\[  FAILED  \] [A-Za-z][A-Za-z0-9_./]*' "$backup/test.log" | sort -u | wc -l)
      killers="$killers $t:${first:-?}${n:+ ($n failed)}"
    elif [ "$rc" -ne 0 ]; then
      crashed="$crashed $t(exit $rc)"
    fi
  done
  restore
  if [ -n "$crashed" ]; then
    printf '%-55s %s\n' "$name" "killed (crashed):$crashed — not an assertion"
    bad=1
  elif [ -n "$killers" ]; then
    printf '%-55s %s\n' "$name" "killed by$killers"
  else
    printf '%-55s %s\n' "$name" "SURVIVED"
    bad=1
  fi
done

# Leave the build directory as the restored tree (ccache makes this a relink).
# shellcheck disable=SC2086
targets=$(echo $touched_targets | tr ' ' '\n' | sort -u | tr '\n' ' ')
[ -n "$targets" ] && cmake --build "$build" -j"$jobs" --target $targets >"$backup/build.log" 2>&1 ||
  { echo "rebuilding the restored sources failed:"; tail -5 "$backup/build.log"; bad=1; }
echo "mutation check: ${#mutations[@]} mutations in $(($(date +%s) - start)) s: $([ $bad -eq 0 ] && echo 'every one killed by an assertion' || echo 'FAILED')"
exit $bad
