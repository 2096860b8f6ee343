#!/usr/bin/env bash
# The main job on a generated example: build dmemu, make two small image files, define a
# striped device over them plus a linear device stacked on top (dmsetup --concise syntax),
# write through the stack, read it back, and show `dmsetup table` / `status` output. Then
# open what the real kernel wrote (shipped fixtures made on Linux 6.12): a thin volume out of
# pool metadata + data files, and an old-style snapshot out of its origin + COW files, each
# checked against the sha256 the kernel printed; a LUKS2 image cryptsetup made, unlocked
# (the crypt table next to the one the kernel loaded) and read; a verity tree veritysetup
# made, verified, and a flipped byte caught. Linux only (pread/pwrite, O_DIRECT).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/cargo-paths.sh
dmemu=$(dmemu_bin)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

truncate -s 1M "$work/a.img" "$work/b.img"
spec="stripes,,,rw,0 4096 striped 2 64 $work/a.img 0 $work/b.img 0;top,,,rw,0 2048 linear stripes 1024,2048 2048 zero"

echo "== tables"
"$dmemu" table --concise "$spec" --device stripes
"$dmemu" table --concise "$spec"
echo "== write 64 KiB of pattern through top (linear over striped), then read it back"
head -c 65536 /dev/urandom > "$work/in.bin"
"$dmemu" write --concise "$spec" --start 0 -i "$work/in.bin"
"$dmemu" read --concise "$spec" --start 0 --sectors 128 -o "$work/out.bin"
cmp "$work/in.bin" "$work/out.bin" && echo "read back identical: $(sha256sum < "$work/out.bin" | cut -c1-16)"
echo "== where the data landed: stripe chunks alternate between a.img and b.img"
echo "a.img sectors 512..575 == input sectors 0..63:   $(cmp <(dd if="$work/a.img" bs=512 skip=512 count=64 status=none) <(head -c 32768 "$work/in.bin") && echo yes)"
echo "b.img sectors 512..575 == input sectors 64..127: $(cmp <(dd if="$work/b.img" bs=512 skip=512 count=64 status=none) <(tail -c 32768 "$work/in.bin") && echo yes)"
echo "== status"
"$dmemu" status --concise "$spec" --device stripes
echo "== a malformed table is refused with line and token"
printf '0 100 linear %s 0\n100 8 striped 2 0 a 0 b 0\n' "$work/a.img" | "$dmemu" check - || true

echo "== a thin volume out of kernel-written pool metadata + data (no kernel, no pool)"
fx=tests/fixtures
gunzip -c "$fx/thin/kernel-meta.img.gz" > "$work/meta.img"
gunzip -c "$fx/thin/kernel-data.img.gz" > "$work/data.img"
"$dmemu" thin ls "$work/meta.img" "$work/data.img"
# The pool is loaded with `read_only`: extraction can never change the metadata.
pool="pool,,,rw,0 65536 thin-pool $work/meta.img $work/data.img 128 0 1 read_only"
"$dmemu" read --concise "$pool;t1,,,ro,0 65536 thin pool 1" --device t1 -o "$work/thin1.img"
echo "thin 1 sha256 (dmemu):  $(sha256sum < "$work/thin1.img" | cut -d' ' -f1)"
echo "thin 1 sha256 (kernel): $(awk '$1 == "SHA256" && $2 == "thin1" {print $3}' "$fx/thin/kernel.txt")"
echo "== an old-style snapshot out of the kernel's origin + COW store"
gunzip -c "$fx/snapshot/k1-origin.img.gz" > "$work/origin.img"
gunzip -c "$fx/snapshot/k1-cowA.img.gz" > "$work/cow.img"
snap="snapA,,,ro,0 8192 snapshot $work/origin.img $work/cow.img P 8"
"$dmemu" status --concise "$snap"
"$dmemu" read --concise "$snap" -o "$work/snap.img"
echo "snapshot sha256 (dmemu):  $(sha256sum < "$work/snap.img" | cut -d' ' -f1)"
echo "snapshot sha256 (kernel): $(awk '$1 == "sha256" && $2 == "snapA:" {s = $3} END {print s}' "$fx/snapshot/kernel-writes.out")"

echo "== a LUKS2 image made by cryptsetup 2.6 (argon2id), data written by the 6.12 kernel"
gunzip -c "$fx/luks/l2-argon2id.img.gz" > "$work/luks.img"
"$dmemu" luks dump "$work/luks.img" | sed -n '1,12p'
echo "crypt line (dmemu, passphrase 'alpha'): $(printf alpha | "$dmemu" luks table "$work/luks.img" --key-file - --showkeys | cut -c1-60)..."
echo "crypt line (kernel's dmsetup table):     $(awk '$1 == "l2-argon2id" && $6 !~ /^:/ {sub(/^[^ ]* /, ""); print}' "$fx/luks/tables.txt" | cut -c1-60)..."
printf alpha | "$dmemu" luks read "$work/luks.img" --key-file - -o "$work/plain.bin"
echo "first plaintext bytes (the kernel wrote byte i = i mod 251 xor i/4096):"
od -A d -t x1 -N 16 "$work/plain.bin"

echo "== a dm-verity tree made by veritysetup 2.6: verified, then one flipped byte is caught"
gunzip -c "$fx/verity/data-a.img.gz" > "$work/vdata.img"
gunzip -c "$fx/verity/hash-v1-sha256-4k.img.gz" > "$work/vhash.img"
root=$(awk '$1 == "v1-sha256-4k" {print $13}' "$fx/verity/cases.txt")
"$dmemu" verity verify "$work/vdata.img" "$work/vhash.img" "$root" && echo "verify: ok (root $root)"
printf '\xff' | dd of="$work/vdata.img" bs=1 seek=40000 conv=notrunc status=none
"$dmemu" verity verify "$work/vdata.img" "$work/vhash.img" "$root" || echo "verify after flipping byte 40000: refused, exit $?"
