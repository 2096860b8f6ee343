#!/usr/bin/env bash
# The main job on a generated example: build dmemu, make two small image files, define a
# striped device over them plus a linear device stacked on top (dmsetup --concise syntax),
# write through the stack, read it back, and show `dmsetup table` / `status` output.
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
