#!/bin/bash
# Issue 12 target: a `dmsetup create` + `table` + `remove` round trip through dmemu's
# dmsetup shim in under 20 ms once the device host runs. Runs N round trips (default 1000)
# as a harness would (three dmsetup processes each), prints the median and percentiles.
# Usage: benches/dmsetup_roundtrip.sh [N]   (builds the release binary first)
set -euo pipefail
n=${1:-1000}
root=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$root
. "$root/scripts/cargo-paths.sh"
bin=$(dmemu_bin)
work=$(mktemp -d)
trap 'DMEMU_DIR=$work/state "$work/dmsetup" remove_all >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
ln -s "$bin" "$work/dmsetup"
export DMEMU_DIR=$work/state
ds=$work/dmsetup
"$ds" create keep --table "0 8 zero"   # the host stays up while a device exists
times=()
for ((i = 0; i < n; i++)); do
  t0=$(date +%s%N)
  "$ds" create rt --table "0 2048 zero"
  "$ds" table rt > /dev/null
  "$ds" remove rt
  t1=$(date +%s%N)
  times+=($(( (t1 - t0) / 1000 )))
done
printf '%s\n' "${times[@]}" | sort -n | awk -v n="$n" '
  { a[NR] = $1 }
  END { printf "%d round trips: median %.2f ms, p10 %.2f ms, p90 %.2f ms, max %.2f ms\n",
        n, a[int(n/2)+1]/1000, a[int(n*0.1)+1]/1000, a[int(n*0.9)+1]/1000, a[n]/1000 }'
