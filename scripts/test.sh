#!/usr/bin/env bash
# Full MOSE test suite on a fresh Debian machine (as root): set-up, unit tests,
# and integration tests against a real containerd, runc and CRIU; then the
# shim's integration tests again under containerd 1.7 and 2.2
# (scripts/test-containerd-matrix.sh). The closing line counts every test run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
MOSE_PROFILE=debug scripts/setup.sh
log=$(mktemp /tmp/mose-test-XXXXXX.log)
trap 'rm -f "$log"' EXIT
# the suite starts private containerd daemons; two at a time fit a 2-core machine
set +e
cargo test --workspace --no-fail-fast --lib --bins --tests -- --test-threads=2 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
scripts/test-containerd-matrix.sh 2>&1 | tee -a "$log"
mrc=${PIPESTATUS[0]}
[[ $rc -ne 0 ]] || rc=$mrc
set -e
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '; ([0-9]+) failed' "$log" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')
echo
echo "mose: $passed passed, $failed failed"
exit "$rc"
