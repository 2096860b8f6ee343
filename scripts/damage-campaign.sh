#!/usr/bin/env bash
# The damage campaign of issue 13 at full size: N damaged inputs (default 20000) from the
# shipped fixtures, derived from SEED (default 13), through dmemu's parsers in-process
# (tests/damage_campaign.rs: no panic, no hang past 10 s per input, inputs unchanged, no
# raw control bytes in errors, peak resident memory per input bounded and the largest
# printed). CI runs the same test with 150 inputs.
# Usage: scripts/damage-campaign.sh [N] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export DAMAGE_N=${1:-20000} DAMAGE_SEED=${2:-13}
start=$(date +%s)
cargo test --release --all-features --test damage_campaign -- --nocapture
echo "damage-campaign.sh: $DAMAGE_N inputs, seed $DAMAGE_SEED, $(( $(date +%s) - start )) s wall"
