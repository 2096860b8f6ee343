#!/usr/bin/env bash
# Times dmemu's thin restore, delta, rmap and ls against thin-provisioning-tools 0.9's
# thin_restore, thin_delta, thin_rmap and thin_ls (and thin_dump, thin_check) on a pool of 10^6 mappings (issue 18's
# targets: <= 0.5 x the time, <= 1.5 x the peak memory), with hyperfine (best of RUNS,
# default 3) and /usr/bin/time -v (maximum resident set size). The pool: device 1 with
# MAPPINGS/4 mappings in runs of 1..40 blocks, then a chain of three snapshots, each
# remapping 5% of the one before and adding 2%; restored once by thin_restore for the
# read-side tools. Page cache is warm for both (same files, read before each timing).
# Usage: benches/thin_tools.sh [MAPPINGS] (default 1000000)
# Needs: thin-provisioning-tools, hyperfine, python3; ~200 MiB in $WORK (default a temp dir).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MAPPINGS=${1:-1000000}
RUNS=${RUNS:-3}
WORK=${WORK:-$(mktemp -d /var/tmp/thinbench.XXXXXX)}
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
. "$ROOT/scripts/cargo-paths.sh"
DMEMU=$(dmemu_bin)

python3 - "$MAPPINGS" > "$WORK/pool.xml" <<'PY'
import random, sys
random.seed(18)
total = int(sys.argv[1])
base, snaps = total // 4, 3
v = d = 0
dev = {}
while len(dev) < base:
    n = random.randint(1, 40)
    for i in range(n):
        dev[v + i] = (d + i, 0)
    v += n + random.randint(0, 30)
    d += n + random.randint(0, 3)
devs = {1: dev}
for s in range(1, snaps + 1):
    dev = dict(dev)
    for k in random.sample(sorted(dev), base // 20):
        dev[k] = (d, s); d += 1
    for i in range(base // 50):
        dev[v + i] = (d, s); d += 1
    v += base // 50
    devs[1 + s] = dev
out = sys.stdout
out.write('<superblock uuid="" time="%d" transaction="1" flags="0" version="2" '
          'data_block_size="128" nr_data_blocks="%d">\n' % (snaps, d + 1000))
for i, m in devs.items():
    out.write('  <device dev_id="%d" mapped_blocks="%d" transaction="0" creation_time="%d" '
              'snap_time="%d">\n' % (i, len(m), i - 1, i - 1))
    run = None
    def emit(r):
        if r is None:
            return
        o, b, t, n = r
        if n == 1:
            out.write('    <single_mapping origin_block="%d" data_block="%d" time="%d"/>\n' % (o, b, t))
        else:
            out.write('    <range_mapping origin_begin="%d" data_begin="%d" length="%d" time="%d"/>\n'
                      % (o, b, n, t))
    for k in sorted(m):
        b, t = m[k]
        if run and k == run[0] + run[3] and b == run[1] + run[3] and t == run[2]:
            run = (run[0], run[1], run[2], run[3] + 1)
        else:
            emit(run)
            run = (k, b, t, 1)
    emit(run)
    out.write('  </device>\n')
out.write('</superblock>\n')
PY
META_MIB=$(( MAPPINGS / 20000 + 16 ))
for f in meta theirs ours; do truncate -s "${META_MIB}M" "$WORK/$f"; done
thin_restore -q -i "$WORK/pool.xml" -o "$WORK/meta"
NR=$(sed -n '1s/.*nr_data_blocks="\([0-9]*\)".*/\1/p' "$WORK/pool.xml")
X=$WORK/pool.xml M=$WORK/meta

# name | 0.9 command | dmemu command
CASES=(
  "restore|thin_restore -q -i $X -o $WORK/theirs|$DMEMU thin restore -q -i $X -o $WORK/ours"
  "delta 1 4|thin_delta --snap1 1 --snap2 4 $M|$DMEMU thin delta --snap1 1 --snap2 4 $M"
  "delta --verbose|thin_delta --verbose --snap1 1 --snap2 4 $M|$DMEMU thin delta --verbose --snap1 1 --snap2 4 $M"
  "rmap all|thin_rmap --region 0..$NR $M|$DMEMU thin rmap --region 0..$NR $M"
  "ls -o|thin_ls -o DEV,MAPPED,EXCLUSIVE,SHARED $M|$DMEMU thin ls -o DEV,MAPPED,EXCLUSIVE,SHARED $M"
  "dump|thin_dump $M|$DMEMU thin dump $M"
  "check|thin_check -q $M|$DMEMU thin check $M"
)
secs() { # command -> best wall seconds over RUNS (hyperfine)
  hyperfine -N --runs "$RUNS" --warmup 1 --export-json "$WORK/h.json" "$1" >/dev/null 2>&1
  python3 -c 'import json,sys; print(min(json.load(open(sys.argv[1]))["results"][0]["times"]))' "$WORK/h.json"
}
rss() { # command -> peak resident set in KiB
  /usr/bin/time -v $1 2>&1 >/dev/null | sed -n 's/.*Maximum resident set size (kbytes): //p'
}
cat "$X" "$M" > /dev/null
printf '%d mappings (%s XML lines), best of %d; load average %s\n' "$MAPPINGS" \
  "$(wc -l < "$X")" "$RUNS" "$(cut -d' ' -f1 /proc/loadavg)"
printf '%-16s %9s %9s %6s %10s %10s %6s\n' case "0.9 s" "dmemu s" time "0.9 KiB" "dmemu KiB" mem
for c in "${CASES[@]}"; do
  IFS='|' read -r name theirs ours <<<"$c"
  # Same answer first (restore: the same dump).
  if [ "$name" != restore ] && [ "$name" != check ]; then
    cmp -s <($theirs) <($ours) || echo "warning: $name: outputs differ" >&2
  fi
  t1=$(secs "$theirs"); t2=$(secs "$ours")
  m1=$(rss "$theirs"); m2=$(rss "$ours")
  printf '%-16s %9.3f %9.3f %6.2f %10d %10d %6.2f\n' "$name" "$t1" "$t2" \
    "$(echo "$t2 / $t1" | bc -l)" "$m1" "$m2" "$(echo "$m2 / $m1" | bc -l)"
done
cmp -s <(thin_dump "$WORK/theirs") <(thin_dump "$WORK/ours") || echo "warning: restore: dumps differ" >&2
