#!/usr/bin/env bash
# Long copies through the copy engine (src/volume/copy.rs) against issue #15's targets, all
# measured in this one run:
#   dmemu read       a 1 GiB aes-xts-plain64 device (AES-256, 4 KiB sectors) to /dev/null
#   dmemu write      1 GiB into that device (input: a file in the page cache)
#   dmemu luks read  a 1 GiB LUKS2 image (aes-xts-plain64, 512-bit key, 4 KiB sectors)
# each as a ratio of `openssl speed -elapsed -evp aes-256-xts -bytes 4096` (one thread;
# target >= 1.5), and
#   dmemu luks read  of a 1 GiB LUKS1 image (aes-xts-plain64, 512-bit key, 512-byte sectors)
# against `qemu-img convert` of the same image (target: qemu's time >= 10 x dmemu's), once
# with both writing nowhere (dmemu -o /dev/null, qemu into its null-co driver: the decrypting
# copy itself) and once with both writing a raw file into $WORK.
#
# `dmemu write` writes into $WORK, by default a directory on /dev/shm (tmpfs): it ends with
# fdatasync, and on a disk the result would be the disk's write speed. The read side runs
# twice, over images in $WORK and over copies in $DISK (default: a directory in /var/tmp, a
# disk file system), page cache warm both times: tmpfs (without huge pages) maps every 4 KiB
# page on its own, which costs the mapping reader about 0.1 s of kernel time a GiB, while a
# file system with large folios (ext4 on 6.x) maps them in batches. Images on disk are
# what users read; both rows print. The LUKS1 comparison with qemu-img reads the disk copy. Every timing is the
# best of $RUNS runs (default 5; qemu: 3), page cache warm. OpenSSL is measured before and
# after the runs and the faster of the two is used. The load average is printed: other work
# on the machine lowers every ratio, so run it on a quiet machine.
# Needs: openssl, cryptsetup, qemu-img (qemu-utils), ~5 GiB free in $WORK and ~4 GiB in $DISK.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/cargo-paths.sh"
DMEMU=$(dmemu_bin)
WORK=${WORK:-$(mktemp -d /dev/shm/copybench.XXXXXX)}
DISK=${DISK:-$(mktemp -d /var/tmp/copybench.XXXXXX)}
trap 'rm -rf "$WORK" "$DISK"' EXIT
RUNS=${RUNS:-5}
MIB=${SIZE_MIB:-1024}
SECTORS=$((MIB * 2048))
BYTES=$((MIB * 1024 * 1024))

ossl() {
  openssl speed -elapsed -evp aes-256-xts -bytes 4096 -seconds 3 2>/dev/null | tail -1 |
    awk '{ v = $2; sub(/k$/, "", v); printf "%.3f\n", v * 1000 / 1e9 }'
}

# best SECONDS of $2 runs of the command after it
best() {
  local n=$1 b="" t0 t1 d
  shift
  for _ in $(seq "$n"); do
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    d=$(echo "$t1 - $t0" | bc -l)
    if [ -z "$b" ] || [ "$(echo "$d < $b" | bc -l)" = 1 ]; then b=$d; fi
  done
  printf '%s\n' "$b"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
ossl_a=$(ossl)

head -c "$BYTES" /dev/urandom >"$WORK/plain"
truncate -s "$BYTES" "$WORK/dev.img"
KEY=$(printf '%064x%064x' 1234567 7654321)
TABLE="0 $SECTORS crypt aes-xts-plain64 $KEY 0 $WORK/dev.img 0 1 sector_size:4096"

for v in 1 2; do
  truncate -s $((BYTES + 16 * 1024 * 1024)) "$WORK/l$v.img"
  args=(--type "luks$v" --cipher aes-xts-plain64 --key-size 512 --pbkdf-force-iterations 1000)
  [ "$v" = 1 ] && args+=(--align-payload 32768)
  [ "$v" = 2 ] && args+=(--pbkdf pbkdf2 --offset 32768 --sector-size 4096)
  printf %s bench | cryptsetup luksFormat -q --key-file - "${args[@]}" "$WORK/l$v.img"
  printf %s bench | "$DMEMU" luks write "$WORK/l$v.img" --key-file - -i "$WORK/plain"
done

dm_write() { "$DMEMU" write --table "$TABLE" -i "$WORK/plain"; }
t_write=$(best "$RUNS" dm_write)
for f in dev.img l1.img l2.img; do cp "$WORK/$f" "$DISK/$f"; cat "$DISK/$f" >/dev/null; done

# $1: the directory the images are read from
dm_read() { "$DMEMU" read --table "${TABLE/$WORK/$1}" -o /dev/null; }
luks_read() { printf %s bench | "$DMEMU" luks read "$DISK/l$1.img" --key-file - -o "$2"; }
luks_read_in() { printf %s bench | "$DMEMU" luks read "$1/l2.img" --key-file - -o /dev/null; }
luks_file() { rm -f "$DISK/out.raw"; luks_read 1 "$DISK/out.raw"; }
qemu_null() {
  qemu-img convert --object secret,id=s0,data=bench \
    --image-opts "driver=luks,key-secret=s0,file.filename=$DISK/l1.img" \
    -n --target-image-opts "driver=null-co,size=$BYTES"
}
qemu_file() {
  rm -f "$DISK/out.raw"
  qemu-img convert --object secret,id=s0,data=bench \
    --image-opts "driver=luks,key-secret=s0,file.filename=$DISK/l1.img" -O raw "$DISK/out.raw"
}

t_read=$(best "$RUNS" dm_read "$WORK")
t_read_disk=$(best "$RUNS" dm_read "$DISK")
t_luks2=$(best "$RUNS" luks_read_in "$WORK")
t_luks2_disk=$(best "$RUNS" luks_read_in "$DISK")
t_luks1=$(best "$RUNS" luks_read 1 /dev/null)
t_qnull=$(best 3 qemu_null)
t_lfile=$(best 3 luks_file)
t_qfile=$(best 3 qemu_file)
rm -f "$DISK/out.raw"
# The disk's own write speed (what any copy to a file in $DISK waits for, O_DIRECT or
# page cache and a final flush): dd of the same size, direct.
dd_disk() { dd if=/dev/zero of="$DISK/out.raw" bs=4M count=$((MIB / 4)) oflag=direct status=none; }
t_disk=$(best 3 dd_disk)
rm -f "$DISK/out.raw"

ossl_b=$(ossl)
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$BYTES" "$ossl_a" "$ossl_b" "$t_read" "$t_write" "$t_luks2" "$t_luks1" \
  "$t_qnull" "$t_lfile" "$t_qfile" "$t_read_disk" "$t_luks2_disk" "$t_disk" <<'PY'
import sys
b, oa, ob, rd, wr, l2, l1, qn, lf, qf, rdd, l2d, dk = map(float, sys.argv[1:])
o = max(oa, ob)
gbs = lambda t: b / t / 1e9
print(f"openssl speed -evp aes-256-xts -bytes 4096, one thread: {oa:.2f} / {ob:.2f} GB/s "
      f"(before / after; {o:.2f} used)")
print(f"\n{f'copy ({b / 2**20:.0f} MiB)':44} {'s':>6} {'GB/s':>6} {'ratio':>6} {'target':>7}")
for name, t in [("dmemu read (crypt, 4 KiB sectors), disk", rdd),
                ("dmemu read (crypt, 4 KiB sectors), tmpfs", rd),
                ("dmemu write (crypt, 4 KiB sectors), tmpfs", wr),
                ("dmemu luks read (LUKS2, 4 KiB sectors), disk", l2d),
                ("dmemu luks read (LUKS2, 4 KiB sectors), tmpfs", l2)]:
    r = gbs(t) / o
    print(f"{name:44} {t:6.3f} {gbs(t):6.2f} {r:6.2f} {'>= 1.5':>7} {'met' if r >= 1.5 else 'NOT met'}")
print()
for name, d, q in [("luks read LUKS1 vs qemu-img convert, no output", l1, qn),
                   ("luks read LUKS1 vs qemu-img convert, to a file", lf, qf)]:
    r = q / d
    print(f"{name:52} dmemu {d:6.3f} s  qemu {q:6.3f} s  ratio {r:6.2f} (>= 10: "
          f"{'met' if r >= 10 else 'NOT met'})")
print(f"disk write ({b / 2**20:.0f} MiB, dd oflag=direct into DISK): {dk:.3f} s; a copy to a "
      f"file there takes at least that; qemu's time / 10 is {qf / 10:.3f} s")
PY
