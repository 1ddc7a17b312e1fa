#!/usr/bin/env bash
# Shows that the attention tests can fail: applies each mutation to a copy of the tree (wrong
# softmax scale, one key dropped, no max subtraction, GQA mapping off by one), builds
# test_kernels_cpu and requires at least one failing test per mutation.
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$src" archive HEAD | tar -x -C "$work"
file=src/kernels/cpu/attention.cpp
mutations=(
  's/scores\[g\]\[j\] = dot \* scale;/scores[g][j] = dot * scale * 1.01f;/'
  's/pos0 + row + 1, \[\]/pos0 + row, []/'
  's/const int64_t n_splits = (n_ctx + kSplit - 1) \/ kSplit;/const int64_t n_splits = (n_ctx - 1 + kSplit - 1) \/ kSplit; n_ctx -= 1;/'
  's/accumulate<T>(kv, head, q + int64_t(head) \* group \* D/accumulate<T>(kv, (head + 1) % kv.n_kv_heads, q + int64_t(head) * group * D/'
)
cmake -S "$work" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSAAP_CUDA=OFF >/dev/null || exit 1
survived=0
for m in "${mutations[@]}"; do
  cp "$src/$file" "$work/$file"
  sed -i "$m" "$work/$file"
  if cmp -s "$src/$file" "$work/$file"; then echo "mutation did not apply: $m"; survived=1; continue; fi
  cmake --build "$work/build" --target test_kernels_cpu -j"$(nproc)" >/dev/null || { echo "build failed: $m"; survived=1; continue; }
  if "$work/build/tests/test_kernels_cpu" >/dev/null 2>&1; then
    echo "SURVIVED: $m"; survived=1
  else
    echo "killed:   $m"
  fi
done
exit $survived
