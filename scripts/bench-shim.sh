#!/usr/bin/env bash
# Shim benchmark: MOSE vs containerd's runc shim, same image, one invocation.
# Usage: scripts/bench-shim.sh [ITERATIONS]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
export MOSE_SHIM_DIR="$PWD/target/release"
exec target/release/mose-bench-shim "$@"
