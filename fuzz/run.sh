#!/usr/bin/env bash
# Run every fuzz target over its seed corpus, then fuzz them within one fixed TOTAL time
# budget split evenly across the targets, so CI time does not grow with the number of
# targets. cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the stable
# toolchain this machine has.
# Usage: fuzz/run.sh [TOTAL_SECONDS] (default 300; the corpus passes are not counted).
set -euo pipefail
cd "$(dirname "$0")"
total=${1:-300}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
n=$(wc -w <<<"$targets")
secs=$(( total / n ))
[ "$secs" -ge 1 ] || secs=1
cargo fuzz build
for t in $targets; do
  mkdir -p "corpus/$t"
  # The largest seed (LUKS images run to the end of a key slot) sets the input size.
  max=$(find "corpus/$t" -type f -printf '%s\n' | sort -n | tail -1)
  max=$(( ${max:-0} > 4096 ? ${max:-0} : 4096 ))
  # Work on a copy so generated inputs do not pile up in the committed seed corpus.
  work=$(mktemp -d)
  cp -r "corpus/$t/." "$work/"
  # The corpus pass: every seed once (-runs=0), outside the budget.
  cargo fuzz run "$t" "$work" -- -runs=0 -max_len="$max" -rss_limit_mb=2048
  # A fixed seed makes a run repeatable: what passes here passes in CI for the same commit.
  cargo fuzz run "$t" "$work" -- -seed=1 -max_total_time="$secs" -max_len="$max" \
    -timeout=10 -rss_limit_mb=2048
  rm -rf "$work"
done
