#!/usr/bin/env bash
# The main job on a generated example: build dmemu, make two small image files, define a
# striped device over them plus a linear device stacked on top (dmsetup --concise syntax),
# write through the stack, read it back, and show `dmsetup table` / `status` output. Then
# open what the real kernel wrote (shipped fixtures made on Linux 6.12): a thin volume out of
# pool metadata + data files, and an old-style snapshot out of its origin + COW files, each
# checked against the sha256 the kernel printed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
dmemu=target/release/dmemu
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
"$dmemu" thin ls "$work/meta.img"
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
