#!/usr/bin/env bash
# Provision containerd 1.7 beside the system's containerd (Debian 12: 1.6), so
# that MOSE's shim can be tested under 1.6, 1.7 and 2.x on one machine.
#
# Fetches Debian 13 (trixie)'s containerd package into a private prefix
# WITHOUT touching the system's apt sources, package database or libc: its own
# apt lists and cache under the prefix (as scripts/provision-criu.sh does for
# criu), `apt-get download`, `dpkg -x`. trixie's containerd only needs
# libc6 >= 2.34 (bookworm has 2.36), so its binaries run as they are.
# Nothing is installed on PATH: the test matrix (scripts/test-containerd-matrix.sh)
# points the test harness at $PREFIX/bin/containerd and $PREFIX/bin/ctr.
# Idempotent: re-running only re-checks the binaries.
set -euo pipefail

PREFIX=${MOSE_CONTAINERD17_PREFIX:-/opt/mose/containerd-1.7}
SUITE=${MOSE_CONTAINERD17_SUITE:-trixie}
MIRROR=${MOSE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
WANT_MAJOR_MINOR=1.7

log() { echo "[provision-containerd] $*" >&2; }

# "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6" -> 1.7.24~ds1
version_of() { "$1" --version 2>/dev/null | awk '{print $3}' | sed 's/^v//'; }

ok() {
  [[ -x "$PREFIX/bin/containerd" && -x "$PREFIX/bin/ctr" ]] || return 1
  [[ $(version_of "$PREFIX/bin/containerd") == "$WANT_MAJOR_MINOR".* ]] || return 1
  "$PREFIX/bin/ctr" --version >/dev/null 2>&1
}

if ok; then
  log "containerd already provisioned: $(version_of "$PREFIX/bin/containerd") in $PREFIX"
  exit 0
fi

log "provisioning Debian $SUITE containerd into $PREFIX"
APTDIR="$PREFIX/apt"
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/etc/preferences.d" "$APTDIR/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main" > "$APTDIR/etc/sources.list"
: > "$APTDIR/etc/preferences"
[[ -f "$APTDIR/status" ]] || : > "$APTDIR/status"
APTOPTS=(
  -o "Dir::Etc::SourceList=$APTDIR/etc/sources.list"
  -o "Dir::Etc::SourceParts=-"
  -o "Dir::Etc::Preferences=$APTDIR/etc/preferences"
  -o "Dir::Etc::PreferencesParts=$APTDIR/etc/preferences.d"
  -o "Dir::State::Lists=$APTDIR/lists"
  -o "Dir::Cache=$APTDIR/cache"
  -o "Dir::State::status=$APTDIR/status"
  -o "APT::Get::List-Cleanup=0"
  -o "Acquire::Check-Valid-Until=false"
  -o "APT::Sandbox::User=root"
)
cd "$APTDIR/debs"
if ! ls containerd_*.deb >/dev/null 2>&1; then
  apt-get "${APTOPTS[@]}" update -qq
  apt-get "${APTOPTS[@]}" download -qq containerd
fi
deb=$(ls containerd_*.deb | head -1)
ROOT="$PREFIX/root"
rm -rf "$ROOT.new"; mkdir -p "$ROOT.new"
dpkg -x "$deb" "$ROOT.new"
rm -rf "$ROOT"; mv "$ROOT.new" "$ROOT"

# bin/ holds containerd, ctr and this containerd's own runc shim, so that a
# daemon started with bin/ first on PATH uses its own io.containerd.runc.v2
mkdir -p "$PREFIX/bin"
for b in "$ROOT"/usr/bin/*; do
  ln -sfn "$b" "$PREFIX/bin/$(basename "$b")"
done

if ! ok; then
  log "error: $PREFIX/bin/containerd is not a working containerd $WANT_MAJOR_MINOR ($deb)"
  exit 1
fi
log "ok: containerd $(version_of "$PREFIX/bin/containerd") in $PREFIX/bin"
