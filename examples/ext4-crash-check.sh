#!/bin/sh
# docs/crash-testing.md: one crash state of an ext4 checked by `dmemu replay-log --fsck`.
# $1: the scratch image of one crash state; DMEMU_CHECK_ENTRY: the entry just replayed.
img=$1
if ! e2fsck -fn "$img" >/dev/null 2>&1; then
  echo "entry $DMEMU_CHECK_ENTRY: e2fsck -fn finds errors"; exit 1
fi
# e2fsck -n leaves the journal alone; replay it (the scratch image may be written) so the
# files are seen as a mount after the crash would see them.
e2fsck -fy "$img" >/dev/null 2>&1
for f in synced unsynced; do
  n=$(debugfs -R "stat /$f" "$img" 2>/dev/null | sed -n "s/.*  Size: \([0-9]*\)$/\1/p" | head -1)
  printf 'entry %s: /%s %s\n' "$DMEMU_CHECK_ENTRY" "$f" "${n:-missing}"
done
