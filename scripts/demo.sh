#!/usr/bin/env bash
# MOSE main job on a fresh Debian machine (as root): set-up, then the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
export MOSE_SHIM_DIR="$PWD/target/release" MOSE_BIN_DIR="$PWD/target/release"
exec target/release/mose-demo "$@"
