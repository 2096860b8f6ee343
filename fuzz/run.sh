#!/usr/bin/env bash
# Run every fuzz target over its seed corpus and then for a bounded time each.
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain
# this machine has. Usage: fuzz/run.sh [SECONDS_PER_TARGET] (default 30).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
for t in $(cargo fuzz list); do
  mkdir -p "corpus/$t"
  # Work on a copy so generated inputs do not pile up in the committed seed corpus.
  work=$(mktemp -d)
  cp -r "corpus/$t/." "$work/"
  # A fixed seed makes a run repeatable: what passes here passes in CI for the same commit.
  cargo fuzz run "$t" "$work" -- -seed=1 -max_total_time="$secs" -max_len=4096 -rss_limit_mb=2048
  rm -rf "$work"
done
