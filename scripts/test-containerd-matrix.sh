#!/usr/bin/env bash
# The MOSE shim's integration tests (crate mose-tests, every test file) under
# the containerd releases beside Debian 12's 1.6, which scripts/test.sh's
# workspace run already covers:
#
#   1.7  Debian 13's containerd 1.7.24, unpacked by scripts/provision-containerd.sh
#        into /opt/mose/containerd-1.7 (MOSE_CONTAINERD17_PREFIX)
#   2.2  containerd v2.2.4 from ../shared/bin (containerd-2.2, ctr-2.2; MOSE_SHARED_BIN)
#
# Each run starts the harness's private daemons from that release
# (MOSE_TEST_CONTAINERD, MOSE_TEST_CTR; config version 3 for 2.x) and uses
# its ctr. MOSE_MATRIX="1.7 2.2" (default) chooses the releases. Output keeps
# cargo's "test result:" lines, so scripts/test.sh counts these tests in its
# closing line; a release whose binaries are missing counts as one failure.
# Exit status: non-zero if any test failed or a release could not be run.
# Measured on a 2-core machine: about 1.5-2 min per release.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PATH="$HOME/.cargo/bin:$PATH"

C17=${MOSE_CONTAINERD17_PREFIX:-/opt/mose/containerd-1.7}/bin
SHARED=${MOSE_SHARED_BIN:-$ROOT/../shared/bin}
MATRIX=${MOSE_MATRIX:-1.7 2.2}

log() { echo "[matrix] $*" >&2; }

binaries() {
  case "$1" in
    1.7) echo "$C17/containerd $C17/ctr" ;;
    2.2) echo "$SHARED/containerd-2.2 $SHARED/ctr-2.2" ;;
    *) return 1 ;;
  esac
}

# the shim under test and the test binaries, built once (test.sh's run did already)
cargo build -p mose-shim --quiet && cargo test -p mose-tests --test '*' --no-run --quiet 2>/dev/null
rc=0
summary=()
for v in $MATRIX; do
  if ! read -r cd ctr < <(binaries "$v"); then
    log "unknown containerd release $v (known: 1.7 2.2)"
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out (unknown containerd $v)"
    rc=1
    continue
  fi
  if [[ ! -x "$cd" || ! -x "$ctr" ]]; then
    log "containerd $v: $cd or $ctr missing (1.7: scripts/provision-containerd.sh; 2.2: ../shared/bin)"
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out (containerd $v missing)"
    summary+=("containerd $v: MISSING")
    rc=1
    continue
  fi
  # the harness runs tests from the crate's directory: absolute paths
  cd=$(realpath -s "$cd"); ctr=$(realpath -s "$ctr")
  log "containerd $v: $("$cd" --version) -- cargo test -p mose-tests"
  out=$(mktemp /tmp/mose-matrix-XXXXXX.log)
  start=$(date +%s)
  MOSE_TEST_CONTAINERD="$cd" MOSE_TEST_CTR="$ctr" \
    cargo test -p mose-tests --test '*' --no-fail-fast -- --test-threads=2 2>&1 | tee "$out"
  r=${PIPESTATUS[0]}
  secs=$(($(date +%s) - start))
  p=$(grep -Eo '^test result: .* ([0-9]+) passed' "$out" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
  f=$(grep -Eo '; ([0-9]+) failed' "$out" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')
  rm -f "$out"
  summary+=("containerd $v: $p passed, $f failed, ${secs} s")
  [[ $r -eq 0 ]] || rc=1
done
for s in "${summary[@]}"; do log "$s"; done
exit "$rc"
