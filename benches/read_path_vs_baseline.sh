#!/usr/bin/env bash
# Issue #10's read-path target: the live-device layer (suspend gate, live-table slot, open
# counts) costs at most 2 % over the read path before it (commit 9507403^, the last one
# without live devices), for linear 4 KiB reads. Both trees build benches/probe/read_path.rs
# (the same loop, API common to both) and run it under callgrind, which counts
# instructions, not seconds: repeatable whatever else the machine is doing. Two runs of N
# and 2N reads per tree cancel the set-up; the difference / N is instructions per read.
# Then CPU time per read, old and new alternating, medians of 11 runs each.
# Usage: benches/read_path_vs_baseline.sh [N] (default 20000)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-20000}
BASE=${BASELINE:-9507403^}
NEW=${NEW_TREE:-$ROOT}
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
work=$(mktemp -d)
[ -n "${KEEP:-}" ] || trap 'git -C "$ROOT" worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$ROOT" worktree add --detach "$work/base" "$BASE" >/dev/null 2>&1
img="$work/img"
head -c $((64 << 20)) /dev/urandom >"$img"
probe() { # DIR-OF-DMEMU NAME -> path of the built probe
  local dir="$work/probe-$2"
  mkdir -p "$dir/src"
  cp "$ROOT/benches/probe/read_path.rs" "$dir/src/main.rs"
  cat >"$dir/Cargo.toml" <<TOML
[package]
name = "probe-$2"
version = "0.0.0"
edition = "2021"
[dependencies]
dmemu = { path = "$1", default-features = false }
# rustix's own vDSO lookup crashes under valgrind; its libc backend does not.
rustix = { version = "1", features = ["use-libc", "time"] }
[profile.release]
debug = false
TOML
  CARGO_TARGET_DIR="$dir/target" cargo build --release --quiet --manifest-path "$dir/Cargo.toml"
  echo "$dir/target/release/probe-$2"
}
new=$(probe "$NEW" new)
old=$(probe "$work/base" old)
instr() { # BIN KIND COUNT -> total instructions
  local log
  log=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null --error-exitcode=99 \
    "$1" "$2" "$3" 2>&1 >/dev/null) || { echo "$log" >&2; return 1; }
  sed -n 's/.*Collected : *\([0-9]*\).*/\1/p' <<<"$log"
}
per_read() { # BIN KIND -> instructions per read
  local a b
  a=$(instr "$1" "$2" "$N")
  b=$(instr "$1" "$2" $((2 * N)))
  echo $(( (b - a) / N ))
}
for kind in mem "$img"; do
  label=$([ "$kind" = mem ] && echo "memory volume" || echo "file volume  ")
  o=$(per_read "$old" "$kind")
  n=$(per_read "$new" "$kind")
  python3 -c "
o, n = $o, $n
print(f'linear 4 KiB read, $label: before live devices {o} instr/read, now {n} instr/read: '
      f'{n / o:.3f} x ({(n / o - 1) * 100:+.1f} %; target <= +2 %)')"
done
# CPU time per read (the probe's own thread clock), old and new alternating, 11 runs of
# 10 N reads each; the medians and their ratio.
cpu() { "$1" "$2" $((10 * N)) 2>&1 >/dev/null | sed -n 's/^cpu_ns_per_read //p'; }
for kind in mem "$img"; do
  label=$([ "$kind" = mem ] && echo "memory volume" || echo "file volume  ")
  os=() ns=()
  for _ in $(seq 11); do os+=("$(cpu "$old" "$kind")"); ns+=("$(cpu "$new" "$kind")"); done
  python3 -c "
import statistics as s
o = s.median([$(IFS=,; echo "${os[*]}")]); n = s.median([$(IFS=,; echo "${ns[*]}")])
print(f'linear 4 KiB read, $label: CPU time before live devices {o:.1f} ns/read, now {n:.1f} ns/read: '
      f'{n / o:.3f} x ({(n / o - 1) * 100:+.1f} %; target <= +2 %)')"
done
