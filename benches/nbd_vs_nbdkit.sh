#!/usr/bin/env bash
# Sequential read of a linear device through `dmemu serve` against `nbdkit file` on the same
# file, both with nbdcopy to null: (issue 11's target: dmemu >= 1.0 x nbdkit). Short by
# default; prints MB/s for each and the ratio. Usage: benches/nbd_vs_nbdkit.sh [MiB] [runs]
# Needs nbdkit and nbdcopy (libnbd-bin); builds dmemu in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-512}
runs=${2:-3}
cargo build --release --quiet
dmemu=$PWD/target/release/dmemu
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c "$((mib << 20))" /dev/urandom > "$work/a.img"
echo "0 $((mib << 11)) linear $work/a.img 0" > "$work/t"
cat "$work/a.img" > /dev/null # both runs read from the page cache
best() { # best of $runs wall times (seconds) of "$@"
  local b=""
  for _ in $(seq "$runs"); do
    local s e
    s=$(date +%s.%N)
    "$@" > /dev/null
    e=$(date +%s.%N)
    b=$(awk -v s="$s" -v e="$e" -v b="$b" 'BEGIN { t = e - s; if (b == "" || t < b) print t; else print b }')
  done
  echo "$b"
}
copy='nbdcopy "$uri" null:'
ours=$(best "$dmemu" serve --table "$work/t" --run "$copy")
theirs=$(best nbdkit -U - file "$work/a.img" --run "$copy")
awk -v m="$mib" -v o="$ours" -v t="$theirs" 'BEGIN {
  printf "dmemu serve  %8.0f MB/s\nnbdkit file  %8.0f MB/s\nratio        %8.2f\n", m*1.048576/o, m*1.048576/t, t/o }'
