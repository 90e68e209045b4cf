#!/usr/bin/env bash
# Full MOSE test suite on a fresh Debian machine (as root): set-up, unit tests,
# and integration tests against a real containerd, runc and CRIU.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
MOSE_PROFILE=debug scripts/setup.sh
# the suite starts private containerd daemons; two at a time fit a 2-core machine
cargo test --workspace -- --test-threads=2
