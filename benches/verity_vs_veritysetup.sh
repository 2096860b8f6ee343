#!/bin/bash
# Times `dmemu verity verify` against `veritysetup verify` on the same 1 GiB image and tree,
# in one run, and prints the ratio (issue 5 target: >= 1.5). Page cache warmed first so both
# read from memory; best of $RUNS runs each.
# usage: benches/verity_vs_veritysetup.sh [SIZE_MIB] (default 1024)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MIB=${1:-1024}
RUNS=${RUNS:-3}
W=${TMPDIR:-/tmp}/verity-bench.$$
mkdir -p "$W"
trap 'rm -rf "$W"' EXIT
. "$ROOT/scripts/cargo-paths.sh"
DMEMU=$(dmemu_bin)
head -c $((MIB << 20)) /dev/urandom > "$W/data.img"
touch "$W/hash.img"
R=$(veritysetup format "$W/data.img" "$W/hash.img" | awk '/^Root hash:/ {print $3}')
cat "$W/data.img" "$W/hash.img" > /dev/null
best() { # command... -> "best-wall-seconds cpu-seconds-of-that-run"
  local b=999999 c=0 out t u
  for _ in $(seq "$RUNS"); do
    out=$( { /usr/bin/time -f '%e %U %S' "$@" > /dev/null; } 2>&1 | tail -1)
    read -r t u s <<<"$out"
    if (( $(echo "$t < $b" | bc -l) )); then b=$t; c=$(echo "$u + $s" | bc -l); fi
  done
  echo "$b $c"
}
read -r V VC < <(best veritysetup verify "$W/data.img" "$W/hash.img" "$R")
read -r D DC < <(best "$DMEMU" verity verify "$W/data.img" "$W/hash.img" "$R")
printf 'image %d MiB, sha256 4096/4096, best of %d; load average %s\n' "$MIB" "$RUNS" "$(cut -d' ' -f1 /proc/loadavg)"
printf 'veritysetup verify:  %.3f s wall (%.0f MB/s), %.3f s CPU\n' "$V" "$(echo "$MIB * 1.048576 / $V" | bc -l)" "$VC"
printf 'dmemu verity verify: %.3f s wall (%.0f MB/s), %.3f s CPU\n' "$D" "$(echo "$MIB * 1.048576 / $D" | bc -l)" "$DC"
printf 'ratio (veritysetup / dmemu), wall: %.2f x   CPU: %.2f x\n' "$(echo "$V / $D" | bc -l)" "$(echo "$VC / $DC" | bc -l)"
