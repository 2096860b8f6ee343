#!/usr/bin/env bash
# Issue 11's export targets, each a ratio measured in this one run (real clients only):
#   1. sequential read of a linear device, `nbdcopy URI null:` through `dmemu serve` against
#      `nbdkit file` on the same file: dmemu >= 1.0 x nbdkit;
#   2. 4 KiB random reads over 4 connections (fio's nbd engine, one connection per job, 4
#      jobs at queue depth 8), IOPS: dmemu >= 1.0 x nbdkit;
#   3. an aes-xts-plain64 crypt device (AES-256, 4 KiB sectors) read through NBD (nbdcopy)
#      against `dmemu read` of the same table to /dev/null: >= 0.8;
#   (3 also prints the client's ceiling: nbdkit's null plugin read by `nbdcopy --no-extents`)
#   4. FUSE sequential read (`dd bs=1M` of the mounted file) against nbdcopy of the same
#      linear device through NBD: >= 0.7.
# Wall clock, best of RUNS, the image in the page cache: run it on a quiet machine (or under
# `chrt -f 50`, which puts it ahead of other work on the machine).
# Usage: benches/nbd_vs_nbdkit.sh [MiB, default 1024] [runs, default 3] [fio seconds, default 10]
# Needs nbdkit, nbdcopy (libnbd-bin), fio (with its nbd engine) and fuse3 for part 4.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/cargo-paths.sh
mib=${1:-1024}
runs=${2:-3}
fio_secs=${3:-10}
dmemu=$(dmemu_bin)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c "$((mib << 20))" /dev/urandom > "$work/a.img"
echo "0 $((mib << 11)) linear $work/a.img 0" > "$work/t"
# AES-256-XTS (a 64-byte key), 4 KiB crypt sectors, over the same file.
key=$(head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "0 $((mib << 11)) crypt aes-xts-plain64 $key 0 $work/a.img 0 1 sector_size:4096" > "$work/c"
cat "$work/a.img" > /dev/null # every run reads from the page cache
export work

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
mbps() { awk -v m="$mib" -v t="$1" 'BEGIN { printf "%.0f", m * 1.048576 / t }'; }
line() { # LABEL OURS THEIRS TARGET (higher is better for both)
  awk -v l="$1" -v o="$2" -v t="$3" -v g="$4" 'BEGIN {
    r = o / t; printf "%-44s %10.0f %10.0f   %5.2f x (target >= %s: %s)\n", l, o, t, r, g, (r >= g ? "met" : "NOT met") }'
}

copy='nbdcopy "$uri" null:'
# 1. Sequential read, alternating the two servers run by run.
ours=$(best "$dmemu" serve --read-only --table "$work/t" --run "$copy")
theirs=$(best nbdkit -r -U - file "$work/a.img" --run "$copy")

# 2. 4 KiB random reads, 4 connections.
cat > "$work/fio.sh" <<EOF
#!/bin/sh
# \$1: the NBD URI; prints the IOPS
fio --name=r --ioengine=nbd --uri="\$1" --rw=randread --bs=4k --iodepth=8 --numjobs=4 \\
  --group_reporting --time_based --runtime=$fio_secs --size=$((mib << 20)) \\
  --output-format=json 2>/dev/null \\
  | python3 -c 'import json, sys; t = sys.stdin.read(); print(round(json.loads(t[t.index("{"):])["jobs"][0]["read"]["iops"]))'
EOF
fio_ours=$("$dmemu" serve --read-only --table "$work/t" --run 'sh "$work/fio.sh" "$uri"' | tail -1)
fio_theirs=$(nbdkit -r -U - file "$work/a.img" --run 'sh "$work/fio.sh" "$uri"' | tail -1)

# 3. crypt: through NBD against dmemu read.
crypt_nbd=$(best "$dmemu" serve --read-only --table "$work/c" --run "$copy")
crypt_read=$(best "$dmemu" read --table "$work/c" -o /dev/null)
# The client's own ceiling: nbdkit's null plugin does no work per request, and without
# extents nbdcopy reads every byte, so this is what the transport into nbdcopy can carry.
ceiling=$(best nbdkit -r -U - null "$((mib << 20))" --run 'nbdcopy --no-extents "$uri" null:')

# 4. FUSE against NBD on the linear device.
fuse=""
if [ -e /dev/fuse ] && command -v fusermount3 > /dev/null; then
  mkdir "$work/mnt"
  fuse=$(best "$dmemu" serve --read-only --table "$work/t" --mount "$work/mnt" \
    --run 'dd if="$file" of=/dev/null bs=1M status=none')
fi

printf "%-44s %10s %10s   %s\n" "" "dmemu" "peer" "ratio"
line "1. nbdcopy seq read MB/s (peer: nbdkit file)" "$(mbps "$ours")" "$(mbps "$theirs")" 1.0
line "2. fio 4k randread 4 conns IOPS (nbdkit)" "$fio_ours" "$fio_theirs" 1.0
line "3. crypt MB/s, NBD (peer: dmemu read)" "$(mbps "$crypt_nbd")" "$(mbps "$crypt_read")" 0.8
awk -v c="$(mbps "$ceiling")" -v r="$(mbps "$crypt_read")" -v n="$(mbps "$crypt_nbd")" 'BEGIN {
  printf "   nbdcopy ceiling (nbdkit null, no extents) %10.0f MB/s = %.2f x dmemu read; crypt NBD = %.2f x ceiling\n", c, c / r, n / c }'
if [ -n "$fuse" ]; then
  line "4. seq read MB/s, FUSE (peer: NBD)" "$(mbps "$fuse")" "$(mbps "$ours")" 0.7
else
  echo "4. FUSE: skipped (no /dev/fuse or fusermount3)"
fi
