#!/usr/bin/env bash
# The MOSE paper's network cases: SockPerf and iPerf3 with their service
# address on the two-node testbed, migrated with every technique.
# Usage: scripts/bench-network.sh [--rate-mbit 1000] [--seconds 10] [--iperf-mbit 200]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
export MOSE_SHIM_DIR="$PWD/target/release" MOSE_BIN_DIR="$PWD/target/release"
exec target/release/mose-bench-network "$@"
