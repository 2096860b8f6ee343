#!/bin/bash
# Remakes benches/cache-1g-meta.img.gz, the metadata benches/cache.rs reads a 1 GiB
# writeback cache through: the host's cache_restore 0.9 (format 2) over an XML of 16384
# cache blocks of 64 KiB, every one mapped (cache block i holds origin block
# (i * 7919) mod 16384, so the origin order is scattered over the cache device), every
# third dirty.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d /tmp/cache-io-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
{
  echo '<superblock uuid="" block_size="128" nr_cache_blocks="16384" policy="smq" hint_width="4">'
  echo '  <mappings>'
  awk 'BEGIN { for (i = 0; i < 16384; i++)
    printf "    <mapping cache_block=\"%d\" origin_block=\"%d\" dirty=\"%s\"/>\n",
      i, (i * 7919) % 16384, (i % 3 == 0) ? "true" : "false" }'
  echo '  </mappings>'
  echo '</superblock>'
} > "$W/in.xml"
truncate -s 4M "$W/m.img"
cache_restore --metadata-version 2 -i "$W/in.xml" -o "$W/m.img"
cache_check "$W/m.img"
gzip -9n < "$W/m.img" > "$HERE/cache-1g-meta.img.gz"
