#!/usr/bin/env bash
# How thin pools cost as they grow (issue 15, point 2): pools of 10^4, 10^6 and 10^7
# mappings that thin_restore (thin-provisioning-tools 0.9) lays out from XML generated
# here, run-heavy and scattered, and what dmemu pays on each:
#   open+read  `dmemu read` of one 4 KiB block of thin 1 (pool opened read-only): wall time,
#              best of RUNS, and the same for a linear table over the data file (the cost of
#              starting dmemu and loading a table), so the difference is the pool's open and
#              first lookup; peak resident memory (/usr/bin/time -v)
#   seq        `dmemu read` of thin 1's first 1 GiB (fully mapped) against a linear table over
#              the same data bytes (page cache warm): the ratio linear time / thin time
#   in-process the same open and first read in one process (criterion median:
#              benches/thin.rs with THIN_BENCH_META), without dmemu's start
#   commit     `dmemu write` of one 4 KiB block into an unmapped block of thin 1 on a
#              writable pool (one new mapping, committed when dmemu exits): wall time of the
#              whole command (start, open, write, commit; compare base_ms), peak memory, and
#              the metadata blocks whose bytes changed
# Thin 1 maps virtual blocks 0..16383 to the data file's first GiB (identity in the
# run-heavy pool, a permutation in the scattered one); the rest of the mappings follow:
# runs of 1..64 blocks with gaps, or single blocks with gaps mapped to scattered data blocks.
# Usage: benches/thin_scale.sh [MAPPINGS...] (default 10000 1000000 10000000)
#        SHAPES="runs scattered" RUNS=5 WORK=dir
# Needs: thin-provisioning-tools, python3, /usr/bin/time; about 1 GiB of page cache, and
# ~700 MiB of disk in $WORK per 10^7 mappings (the data file is sparse past its first GiB).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCALES=${*:-10000 1000000 10000000}
SHAPES=${SHAPES:-runs scattered}
RUNS=${RUNS:-5}
WORK=${WORK:-$(mktemp -d /var/tmp/thin-scale.XXXXXX)}
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
. "$ROOT/scripts/cargo-paths.sh"
DMEMU=$(dmemu_bin)
BS=128            # data block size in sectors (64 KiB)
SEQ=16384         # blocks of thin 1 mapped onto the data file's first GiB

gen() { # MAPPINGS SHAPE > XML; prints nothing else
  python3 - "$1" "$2" <<'PY'
import random, sys
total, shape = int(sys.argv[1]), sys.argv[2]
SEQ = 16384
random.seed(15)
out = sys.stdout
rest = max(total - SEQ, 0)
head = min(total, SEQ)
nr_data = SEQ + 2 * rest + 1024
out.write('<superblock uuid="" time="1" transaction="1" flags="0" version="2" '
          'data_block_size="128" nr_data_blocks="%d">\n' % nr_data)
out.write('  <device dev_id="1" mapped_blocks="%d" transaction="0" creation_time="0" '
          'snap_time="0">\n' % total)
w = out.write
if shape == "runs":
    w('    <range_mapping origin_begin="0" data_begin="0" length="%d" time="0"/>\n' % head)
    v, d, left = SEQ + 7, SEQ, rest
    while left:
        n = min(random.randint(1, 64), left)
        w('    <range_mapping origin_begin="%d" data_begin="%d" length="%d" time="0"/>\n'
          % (v, d, n) if n > 1 else
          '    <single_mapping origin_block="%d" data_block="%d" time="0"/>\n' % (v, d))
        v += n + random.randint(1, 32)
        d += n + random.randint(0, 2)
        left -= n
else:
    # The first GiB: a permutation of data blocks 0..SEQ-1 with no two neighbours adjacent.
    p = 7919
    for i in range(head):
        w('    <single_mapping origin_block="%d" data_block="%d" time="0"/>\n'
          % (i, (i * p) % SEQ))
    # The rest: gaps of 1..3 blocks, data blocks a permutation of 2 * rest blocks.
    m = 2 * rest + 1
    q = 1_000_003
    while m % q == 0:
        q += 2
    v = SEQ + 1
    for i in range(rest):
        w('    <single_mapping origin_block="%d" data_block="%d" time="0"/>\n'
          % (v, SEQ + (i * q) % m if m > 1 else SEQ))
        v += 1 + (i * 2654435761 >> 7) % 3
w('  </device>\n</superblock>\n')
PY
}

best() { # command... -> best wall seconds of RUNS
  local b=
  for _ in $(seq "$RUNS"); do
    local t0 t1
    t0=$(date +%s.%N)
    "$@" > /dev/null
    t1=$(date +%s.%N)
    b=$(echo "$t1 - $t0" | bc -l | awk -v b="$b" '{ if (b == "" || $1 < b) print $1; else print b }')
  done
  echo "$b"
}
rss() { # command... -> peak resident set in KiB
  /usr/bin/time -v "$@" 2>&1 >/dev/null | sed -n 's/.*Maximum resident set size (kbytes): //p'
}
changed_blocks() { # A B -> metadata blocks whose bytes differ
  python3 - "$1" "$2" <<'PY'
import sys
n = 0
with open(sys.argv[1], "rb") as a, open(sys.argv[2], "rb") as b:
    while True:
        x, y = a.read(1 << 20), b.read(1 << 20)
        if not x and not y:
            break
        for i in range(0, max(len(x), len(y)), 4096):
            n += x[i:i + 4096] != y[i:i + 4096]
print(n)
PY
}

printf '# dmemu %s, load average %s, best of %d\n' "$(git -C "$ROOT" describe --always --dirty)" \
  "$(cut -d' ' -f1 /proc/loadavg)" "$RUNS"
printf '%-9s %-9s %7s %9s %9s %12s %8s %9s %9s %9s %7s\n' mappings shape meta_MiB \
  "open+rd_ms" "base_ms" "in-process" "rd_KiB" seq_ratio "commit_ms" "cmt_KiB" blocks
for n in $SCALES; do
  for shape in $SHAPES; do
    X=$WORK/pool.xml M=$WORK/meta D=$WORK/data
    gen "$n" "$shape" > "$X"
    NR=$(sed -n '1s/.*nr_data_blocks="\([0-9]*\)".*/\1/p' "$X")
    rm -f "$M" "$D"
    truncate -s "$(( n / 20000 + 16 ))M" "$M"
    thin_restore -q -i "$X" -o "$M"
    truncate -s $(( NR * BS * 512 )) "$D"
    head -c $(( SEQ * BS * 512 )) /dev/urandom | dd of="$D" conv=notrunc status=none
    rm -f "$X"
    POOL="pool,,,rw,0 $(( NR * BS )) thin-pool $M $D $BS 0"
    RO="$POOL 1 read_only;t1,,,ro,0 $(( 1 << 40 )) thin pool 1"
    LIN="0 $(( SEQ * BS )) linear $D 0"
    # Warm the page cache: the metadata and the data file's first GiB (the rest is holes).
    cat "$M" > /dev/null
    head -c $(( SEQ * BS * 512 )) "$D" > /dev/null
    one=(read --concise "$RO" --device t1 --start 0 --sectors 8 -o /dev/null)
    t_open=$(best "$DMEMU" "${one[@]}")
    t_base=$(best "$DMEMU" read --read-only --table "$LIN" --start 0 --sectors 8 -o /dev/null)
    m_open=$(rss "$DMEMU" "${one[@]}")
    # Alternating, so both see the same machine; best of RUNS each.
    t_seq= t_lin=
    for _ in $(seq "$RUNS"); do
      t_seq=$(RUNS=1 best "$DMEMU" read --concise "$RO" --device t1 --sectors $(( SEQ * BS )) -o /dev/null | awk -v b="$t_seq" '{ if (b == "" || $1 < b) print $1; else print b }')
      t_lin=$(RUNS=1 best "$DMEMU" read --read-only --table "$LIN" --sectors $(( SEQ * BS )) -o /dev/null | awk -v b="$t_lin" '{ if (b == "" || $1 < b) print $1; else print b }')
    done
    # One new mapping past the last one, committed as dmemu exits.
    head -c 4096 /dev/urandom > "$WORK/blk"
    cp "$M" "$WORK/meta.before"
    RW="$POOL;t1,,,rw,0 $(( 1 << 40 )) thin pool 1"
    last=$(( (1 << 40) / BS - 1 ))
    m_commit=$(rss "$DMEMU" write --concise "$RW" --device t1 --start $(( last * BS )) -i "$WORK/blk")
    blocks=$(changed_blocks "$WORK/meta.before" "$M")
    cp "$WORK/meta.before" "$M"
    # Timed alone: the copy back of the metadata (which at 10^7 costs more than the commit)
    # happens before each run, outside the timing.
    t_commit=
    for _ in $(seq "$RUNS"); do
      cp "$WORK/meta.before" "$M"
      t_commit=$(RUNS=1 best "$DMEMU" write --concise "$RW" --device t1 --start $(( last * BS )) -i "$WORK/blk" | awk -v b="$t_commit" '{ if (b == "" || $1 < b) print $1; else print b }')
    done
    thin_check -q "$M"
    # The same open and first read in process (criterion, benches/thin.rs `external`).
    t_in=$( (cd "$ROOT" && THIN_BENCH_META=$M cargo bench --quiet --bench thin -- \
        --warm-up-time 1 --measurement-time 3 thin_scale_open 2>/dev/null) |
      sed -n 's/.*time: *\[[^ ]* [^ ]* \([^ ]*\) \([^ ]*\) .*/\1 \2/p' | head -1)
    printf '%-9s %-9s %7d %9.1f %9.1f %12s %8d %9.3f %9.1f %9d %7d\n' "$n" "$shape" \
      $(( $(stat -c %s "$M") >> 20 )) "$(echo "$t_open * 1000" | bc -l)" \
      "$(echo "$t_base * 1000" | bc -l)" "${t_in// /}" "$m_open" "$(echo "$t_lin / $t_seq" | bc -l)" \
      "$(echo "$t_commit * 1000" | bc -l)" "$m_commit" "$blocks"
  done
done
