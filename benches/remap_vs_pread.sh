#!/usr/bin/env bash
# Runs the remapping benches (random request-aligned reads over a 64 MiB page-cached image) and prints them next to raw pread of the same file, with the
# ratios the foundation targets are stated in:
#   linear 64 KiB reads from a page-cached file  >= 0.95 x raw pread
#   linear 4 KiB reads over a read-only mapping  >= 2 x raw 4 KiB pread
#   segment lookup in a 100,000-line table        < 50 ns
#   parse + validate a 100,000-line table         < 100 ms
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/cargo-paths.sh
TARGET_DIR=$(target_dir)
export TARGET_DIR
cargo bench --bench volume_io --bench table_parse -- --warm-up-time 1 --measurement-time 4 >/dev/null
python3 - <<'PY'
import json, os
def ns(name):
    return json.load(open(f"{os.environ['TARGET_DIR']}/criterion/{name}/new/estimates.json"))["mean"]["point_estimate"]
raw4, raw64 = ns("read/raw_pread/4096"), ns("read/raw_pread/65536")
for n in ["linear_file", "striped_file", "linear_mmap", "linear_mem", "striped_mem"]:
    for size, raw in [(4096, raw4), (65536, raw64)]:
        t = ns(f"read/{n}/{size}")
        print(f"read {n:13s} {size:6d} B: {t:9.1f} ns  {size/t:6.2f} GB/s  {raw/t:5.2f} x raw pread")
print(f"segment lookup, 100k lines: {ns('segment_lookup_100k_lines'):.1f} ns")
print(f"parse + validate 100k lines: {ns('table_parse/parse_validate_100k_lines')/1e6:.1f} ms")
PY
