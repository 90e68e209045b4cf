#!/usr/bin/env bash
# Provision youki, the second OCI runtime MOSE is tested with (runc is the
# default; `BinaryName = "youki"` in the runtime options selects youki).
#
# youki has no Debian package: it is built from crates.io at a pinned version
# into a private prefix (/opt/mose/youki) and linked into /usr/local/bin, where
# the shim finds it by name. Idempotent: when the pinned version is already
# installed and runs, nothing is built (the build, niced, took 18 minutes on
# the 2-core machine while other builds ran).
#
# Features: v1 and v2 cgroup managers (hosts with the cgroup v1 hierarchy, such
# as the hybrid layout of the test machines, need v1) and seccomp (libseccomp).
# youki 0.7 dumps a running container (`checkpointt`, through CRIU's RPC) but
# has no `restore`; see README's runtime table.
set -euo pipefail

VERSION=${MOSE_YOUKI_VERSION:-0.7.0}
FEATURES=${MOSE_YOUKI_FEATURES:-v1,v2,seccomp}
PREFIX=${MOSE_YOUKI_PREFIX:-/opt/mose/youki}
LINK=${MOSE_YOUKI_LINK:-/usr/local/bin/youki}

log() { echo "[provision-youki] $*" >&2; }

installed_version() {
  [[ -x "$PREFIX/bin/youki" ]] || return 0
  "$PREFIX/bin/youki" --version 2>/dev/null | sed -n 's/^youki version:\{0,1\} \([0-9.]*\).*/\1/p' | head -1
}

link() {
  mkdir -p "$(dirname "$LINK")"
  if [[ "$(readlink "$LINK" 2>/dev/null)" != "$PREFIX/bin/youki" ]]; then
    ln -sfn "$PREFIX/bin/youki" "$LINK"
  fi
}

if [[ "$(installed_version)" == "$VERSION" ]]; then
  link
  log "youki $VERSION already installed: $LINK -> $PREFIX/bin/youki"
  exit 0
fi

# build dependencies: libseccomp for the seccomp feature, pkg-config to find it
PKGS=(libseccomp-dev pkg-config gcc libc6-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing build dependencies: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    log "error: cargo not found: install a Rust toolchain (rustup) first"
    exit 1
  fi
fi

log "building youki $VERSION (features $FEATURES) into $PREFIX; this takes several minutes"
start=$(date +%s)
nice -n 10 cargo install youki --version "=$VERSION" --locked --no-default-features \
  --features "$FEATURES" --root "$PREFIX" --force --quiet
log "built in $(( $(date +%s) - start )) s"

got=$(installed_version)
if [[ "$got" != "$VERSION" ]]; then
  log "error: $PREFIX/bin/youki reports version '${got:-none}', expected $VERSION"
  exit 1
fi
link
log "ok: youki $VERSION at $LINK"
