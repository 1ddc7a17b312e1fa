# Issue 14's comparison grid on Gemma-3-270M, one place for every script that runs it
# (scripts/gemma_niah.sh on the CPU, scripts/gpu_gemma_tasks.sh on the GPU). Source it, then
#   gemma_configs SAAP_ARTIFACT KMEANS_ARTIFACT LOKI_ARTIFACT
# prints one "name|saap flags" line per configuration, most important first:
#   dense; Saap, k-means and Quest at 5% of the context and at 2048 tokens; the partition oracle
#   at 5% (the ceiling of any router on these partitions); Loki (k_f 0.05; d_f 0.25, and 0.125: the
#   GPU's rank 32); StreamingLLM
#   at 2048 tokens (4 sinks + 2044 recent); the oracle top-k at 5%; H2O at 5% and at 2048 tokens
#   (--method-prefill: its heavy hitters accumulate over the prompt's queries, which an exact
#   prefill never shows it; eval ppl runs every position through the method anyway, and
#   gpu_gemma_tasks.sh leaves the flag out there); then the rest of the grid:
#   Saap, k-means and Quest at 2% and 10% and at 512 and 1024 tokens, the partition oracle and
#   the oracle at 2048 tokens.
# Names: <method>_<n>, n < 100 a percentage of the context (--lookup n/100), else a token budget
# (--budget-tokens n; streaming: sinks + window). The budgeted methods read 4 sinks + 64 recent
# positions inside their budget (saap::rules). The partition oracle ranks the k-means partitions
# (Saap's own: it is trained with --partition-from that artifact) by their true attention.
# shellcheck shell=bash

gemma_configs() {
  local saap=$1 kmeans=$2 loki=$3
  local fixed="--sinks 4 --window 64"
  # flags of a budget name: 5 -> --lookup 0.05, 2048 -> --budget-tokens 2048
  _gemma_budget() { if (( $1 < 100 )); then printf -- '--lookup %s' "$(awk -v p="$1" 'BEGIN{printf "%g", p/100}')";
             else printf -- '--budget-tokens %s' "$1"; fi; }
  _gemma_partition() {  # method artifact budget
    echo "$1_$3|--method $1 --artifact $2 $(_gemma_budget "$3") $fixed"
  }
  _gemma_quest() { echo "quest_$1|--method quest $(_gemma_budget "$1") $fixed"; }

  echo "dense|--method dense"
  for b in 5 2048; do
    _gemma_partition saap "$saap" "$b"
    _gemma_partition kmeans "$kmeans" "$b"
    _gemma_quest "$b"
  done
  _gemma_partition partition-oracle "$kmeans" 5
  echo "loki_5|--method loki --artifact $loki --k-f 0.05 --d-f 0.25"
  # d_f 0.25 of Gemma's head_dim 256 is rank 64 (the GPU takes it since radix_topk.cuh's commit; it
  # took 8, 16 or 32 before, so the H200 tables of 2026-12-03 have only d_f 0.125, rank 32).
  echo "loki_5_r32|--method loki --artifact $loki --k-f 0.05 --d-f 0.125"
  echo "streaming_2048|--method streaming --sinks 4 --window 2044"
  echo "oracle_5|--method oracle --lookup 0.05"
  echo "h2o_5|--method h2o --lookup 0.05 --method-prefill"
  echo "h2o_2048|--method h2o --budget-tokens 2048 --method-prefill"
  for b in 2 10 512 1024; do
    _gemma_partition saap "$saap" "$b"
    _gemma_partition kmeans "$kmeans" "$b"
    _gemma_quest "$b"
  done
  _gemma_partition partition-oracle "$kmeans" 2048
  echo "oracle_2048|--method oracle --budget-tokens 2048"
}
