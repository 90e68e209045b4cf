#!/usr/bin/env bash
# Policy benchmark: cost-model accuracy (predicted vs measured downtime and
# total time) and target hit-rate, MOSE's plan vs a fixed configuration (Parts
# A and B), and the MOSE paper's use cases migrated with their own targets
# (Part C: a UAV control loop, a multi-object tracker), on the two-node testbed.
# Usage: scripts/bench-policy.sh [--parts a,b,c] [--scenarios uav,tracker]
#        [--runs 3] [--state 32,128] [--dirty 0,8] [--links 1000,200]
#        (every argument goes to mose-bench-policy; see its --help)
# Only the use cases: scripts/bench-policy.sh --parts c
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
export MOSE_SHIM_DIR="$PWD/target/release" MOSE_BIN_DIR="$PWD/target/release"
exec target/release/mose-bench-policy "$@"
