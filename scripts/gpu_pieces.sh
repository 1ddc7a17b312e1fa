#!/usr/bin/env bash
# Files too large for one call to the GPU machine (64 MiB carried per call) cross it in pieces.
#
# Here:            scripts/gpu_pieces.sh split [--max BYTES] FILE[=NAME] ...
#   Cuts each FILE into pieces of at most BYTES (default 28,000,000: the per-call limit, 64 MiB,
#   less the working tree, ~32 MB with results/ at 83c0b13, and .gpu-deps) and packs the pieces,
#   first fit largest first, into folders .pieces/g01, .pieces/g02, ... of at most BYTES each,
#   beside NAME.sha256. Prints one folder per line: carry one folder per call.
# GPU machine:     scripts/gpu_pieces.sh stash        (in each call, for the folder it carries)
#   Copies every carried .pieces/g* folder's files to /tmp/pieces/parts, which outlives the call
#   (the device removes a carried path that the next call does not name again).
#                  scripts/gpu_pieces.sh assemble [NAME...]   (in the call after the last piece)
#   Joins the pieces of each NAME (default: every NAME whose hash was carried) into /tmp/pieces/NAME and checks its
#   sha256; a missing piece or a wrong hash is an error naming the file, and leaves no NAME behind.
set -euo pipefail
parts=/tmp/pieces/parts
mode=${1:?usage: gpu_pieces.sh split|stash|assemble ...}
shift

case $mode in
split)
  max=28000000
  if [[ ${1:-} == --max ]]; then max=$2; shift 2; fi
  rm -rf .pieces/g[0-9]* .pieces/cut
  mkdir -p .pieces/cut
  for spec in "$@"; do
    file=${spec%%=*}
    name=${spec#*=}
    [[ $name == "$spec" ]] && name=$(basename "$file")
    [[ -f $file ]] || { echo "gpu_pieces: $file: no such file" >&2; exit 1; }
    (cd "$(dirname "$file")" && sha256sum "$(basename "$file")") | awk -v n="$name" '{print $1 "  " n}' \
      > ".pieces/cut/$name.sha256"
    split -b "$max" -d -a 2 "$file" ".pieces/cut/$name.part"
  done
  # First fit, largest piece first: each group stays under max bytes; the hashes (tiny) go with
  # the first group, which every run carries first.
  sizes=()
  for piece in $(ls -S .pieces/cut | grep -v '\.sha256$'); do
    size=$(stat -c %s ".pieces/cut/$piece")
    g=0
    while (( g < ${#sizes[@]} && sizes[g] + size > max )); do g=$((g + 1)); done
    (( g < ${#sizes[@]} )) || sizes+=(0)
    sizes[g]=$((sizes[g] + size))
    dir=$(printf '.pieces/g%02d' $((g + 1)))
    mkdir -p "$dir"
    mv ".pieces/cut/$piece" "$dir/"
  done
  mv .pieces/cut/*.sha256 .pieces/g01/
  rmdir .pieces/cut
  for dir in .pieces/g[0-9]*; do echo "$dir $(du -sb "$dir" | cut -f1) bytes: $(ls "$dir" | tr '\n' ' ')"; done
  ;;
stash)
  mkdir -p "$parts"
  found=0
  for dir in .pieces/g[0-9]*; do
    [[ -d $dir ]] || continue
    cp "$dir"/* "$parts"/
    found=1
    echo "stashed $dir: $(ls "$dir" | tr '\n' ' ')"
  done
  (( found )) || { echo "gpu_pieces: no .pieces/g* folder was carried into this call" >&2; exit 1; }
  ;;
assemble)
  shopt -s nullglob
  names=("$@")
  if (( ${#names[@]} == 0 )); then
    for sum in "$parts"/*.sha256; do names+=("$(basename "$sum" .sha256)"); done
  fi
  for name in "${names[@]}"; do
    sum=$parts/$name.sha256
    [[ -f $sum ]] || { echo "gpu_pieces: $name: no $name.sha256 in $parts (its first folder was not carried)" >&2; exit 1; }
    [[ -f /tmp/pieces/$name ]] && sha256sum --status -c <(sed "s|  |  /tmp/pieces/|" "$sum") && {
      echo "$name: already assembled"; continue; }
    pieces=("$parts/$name".part*)
    (( ${#pieces[@]} )) || { echo "gpu_pieces: $name: no pieces in $parts" >&2; exit 1; }
    cat "${pieces[@]}" > "/tmp/pieces/$name.tmp"
    want=$(cut -d' ' -f1 "$sum")
    got=$(sha256sum "/tmp/pieces/$name.tmp" | cut -d' ' -f1)
    if [[ $want != "$got" ]]; then
      rm -f "/tmp/pieces/$name.tmp"
      echo "gpu_pieces: $name: sha256 $got of ${#pieces[@]} pieces, expected $want (a piece is missing or torn)" >&2
      exit 1
    fi
    mv "/tmp/pieces/$name.tmp" "/tmp/pieces/$name"
    echo "$name: ${#pieces[@]} pieces, sha256 ok"
  done
  ;;
*)
  echo "usage: gpu_pieces.sh split|stash|assemble" >&2
  exit 2
  ;;
esac
