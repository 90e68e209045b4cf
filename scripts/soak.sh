#!/usr/bin/env bash
# The soak in full: one state service migrated back and forth 50 times with
# post-copy and hybrid between two testbed nodes (integration/tests/soak.rs;
# the suite runs 8 hops). Prints one line per hop: downtime, the agents'
# descriptors and memory, tmpfs use, mounts, processes, page-server ports;
# the whole output is kept in target/soak.log. Run as root after
# scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
HOPS=${1:-50}
cargo build --workspace --bins
set +e
MOSE_SOAK_HOPS=$HOPS cargo test -p mose-integration --test soak -- --nocapture > target/soak.log 2>&1
rc=$?
set -e
grep -E '^hop|^test |test result' target/soak.log
grep -A6 'panicked' target/soak.log || true
exit $rc
