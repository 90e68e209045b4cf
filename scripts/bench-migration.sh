#!/usr/bin/env bash
# Migration benchmark: MOSE's techniques vs three cold baselines (pipeline:
# runc + tar over TCP; podman; ctr-content-store) in one invocation, on the
# two-node testbed, grid of state size x dirty rate x link rate.
# Usage: scripts/bench-migration.sh [--state 64,512] [--dirty 0,16] [--links 1000,200] [--runs 1]
#        [--techniques pipeline,podman,ctr-content-store,cold,precopy,postcopy,hybrid]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
export MOSE_SHIM_DIR="$PWD/target/release" MOSE_BIN_DIR="$PWD/target/release"
exec target/release/mose-bench-migration "$@"
