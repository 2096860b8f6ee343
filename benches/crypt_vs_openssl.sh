#!/usr/bin/env bash
# Run the crypt bench (aes-xts-plain64, 4 KiB crypt sectors, 64 KiB requests, one thread,
# over a sink lower device so only the cipher is measured) next to
# `openssl speed -evp aes-{128,256}-xts -bytes 4096` and print our speed as a ratio of
# OpenSSL's. Both are wall-clock (`openssl speed -elapsed`), so run it on a quiet machine.
# Usage: benches/crypt_vs_openssl.sh [seconds per openssl run, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-3}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

cargo bench --bench crypt -- 'crypt/sink/.*/ss(512|4096)/64KiB' 2>/dev/null | tee "$out" \
    | grep -E '^crypt/|thrpt' || true

declare -A ossl
for bits in 128 256; do
    line="$(openssl speed -elapsed -evp "aes-${bits}-xts" -bytes 4096 -seconds "$secs" 2>/dev/null | tail -1)"
    # "AES-256-XTS   7919131.55k": thousands of bytes per second.
    ossl[$bits]="$(awk '{ v = $2; sub(/k$/, "", v); printf "%.3f", v / 1e6 }' <<<"$line")"
done

python3 - "$out" "${ossl[128]}" "${ossl[256]}" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
ossl = {"128": float(sys.argv[2]), "256": float(sys.argv[3])}
unit = {"GiB/s": 2**30 / 1e9, "MiB/s": 2**20 / 1e9, "KiB/s": 2**10 / 1e9}
name = None
print(f"\n{'bench':58} {'dmemu GB/s':>10} {'openssl':>8} {'ratio':>6}")
for line in text.splitlines():
    if line.startswith("crypt/"):
        name = line.split()[0]
    m = re.search(r"thrpt:\s+\[\S+ \S+ (\S+) (\S+)", line)
    if name and m and "%" not in line:
        gbs = float(m.group(1)) * unit[m.group(2)]
        bits = re.search(r"aes(\d+)", name).group(1)
        o = ossl[bits]
        print(f"{name:58} {gbs:10.2f} {o:8.2f} {gbs / o:6.2f}")
        name = None
print("openssl: speed -elapsed -evp aes-{128,256}-xts -bytes 4096 (one thread, GB/s)")
PY
