#!/usr/bin/env bash
# Issue 16's replay target: replaying to a check point and checking costs O(changed blocks),
# not a device copy: 100 check points on a 1 GiB device in under 10 s plus the checker's
# own time. Writes a log of 100 x (32 KiB write, flush) through dmemu's log-writes target
# over a sparse 1 GiB image, then times `dmemu replay-log --check flush` with a checker
# that does nothing (`true`) and one that writes to every scratch image (so every check
# copies the allocated extents again), and checks the replayed image equals the device.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/cargo-paths.sh
cargo build --release --quiet
DMEMU=$(target_dir)/release/dmemu
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
truncate -s 1G "$tmp/data.img" "$tmp/replay.img"
truncate -s 64M "$tmp/log.img"
for i in $(seq 0 99); do echo "write $((i * 20000)) 64 $((i % 250 + 1))"; echo flush; done \
  | "$DMEMU" shell --table "0 2097152 log-writes $tmp/data.img $tmp/log.img" >/dev/null
"$DMEMU" replay-log --log "$tmp/log.img"
for checker in true 'dd if=/dev/zero bs=512 count=1 conv=notrunc status=none of={}'; do
  truncate -s 0 "$tmp/replay.img"; truncate -s 1G "$tmp/replay.img"
  start=$(date +%s.%N)
  "$DMEMU" replay-log --log "$tmp/log.img" --replay "$tmp/replay.img" \
    --fsck "$checker" --check flush
  end=$(date +%s.%N)
  cmp "$tmp/replay.img" "$tmp/data.img"
  python3 -c "print('checker %-60r 100 check points: %.2f s (target < 10 s + checker)' % ('$checker', $end - $start))"
done
