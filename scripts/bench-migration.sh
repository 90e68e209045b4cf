#!/usr/bin/env bash
# Migration benchmark: MOSE cold and pre-copy vs a ctr + tar-over-TCP baseline,
# on the two-node testbed, grid of state size x dirty rate x link rate.
# Usage: scripts/bench-migration.sh [--state 64,512] [--dirty 0,16] [--links 1000,200] [--runs 1]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
export MOSE_SHIM_DIR="$PWD/target/release" MOSE_BIN_DIR="$PWD/target/release"
exec target/release/mose-bench-migration "$@"
