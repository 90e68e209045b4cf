#!/usr/bin/env bash
# Provision a working CRIU >= 4 for MOSE.
#
# Uses the distribution's criu when `criu check` passes and its version is >= 4.
# Otherwise (e.g. Debian 12, whose criu 3.17 cannot parse the vDSO layout of
# recent kernels) it fetches Debian 13's criu and its libraries into a private
# prefix WITHOUT touching the system's apt sources or libc, and installs a
# `criu` wrapper in front of PATH that runs the binary through that prefix's
# dynamic loader. Idempotent: re-running only re-checks.
set -euo pipefail

PREFIX=${MOSE_CRIU_PREFIX:-/opt/mose/criu}
WRAPPER=${MOSE_CRIU_WRAPPER:-/usr/local/sbin/criu}
SUITE=${MOSE_CRIU_SUITE:-trixie}
MIRROR=${MOSE_DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { echo "[provision-criu] $*" >&2; }

criu_major() { "$1" --version 2>/dev/null | sed -n 's/^Version: \([0-9]*\)\..*/\1/p' | head -1; }

works() {
  local bin=$1 major
  major=$(criu_major "$bin")
  [[ -n "$major" && "$major" -ge 4 ]] || return 1
  "$bin" check >/dev/null 2>&1
}

SOCKOPT_SRC="$(cd "$(dirname "$0")" && pwd)/criu/mose-sockopt.c"
SOCKOPT_LIB="$PREFIX/mose-sockopt.so"

# CRIU 4.1 cannot dump inet sockets on Linux >= 6.16 (SO_PASSCRED/SO_PASSSEC
# now fail with EOPNOTSUPP on them); a tiny preload makes those reads exact zeros.
build_sockopt() {
  mkdir -p "$PREFIX"
  if [[ ! -f "$SOCKOPT_LIB" || "$SOCKOPT_SRC" -nt "$SOCKOPT_LIB" ]]; then
    gcc -shared -fPIC -O2 -o "$SOCKOPT_LIB.tmp" "$SOCKOPT_SRC" -ldl
    mv "$SOCKOPT_LIB.tmp" "$SOCKOPT_LIB"
  fi
}

if [[ -x "$WRAPPER" ]] && grep -q mose-sockopt "$WRAPPER" && [[ -f "$SOCKOPT_LIB" && ! "$SOCKOPT_SRC" -nt "$SOCKOPT_LIB" ]] && works "$WRAPPER"; then
  log "criu already provisioned: $("$WRAPPER" --version | head -1) via $WRAPPER"
  exit 0
fi
if command -v /usr/sbin/criu >/dev/null && works /usr/sbin/criu; then
  build_sockopt
  mkdir -p "$(dirname "$WRAPPER")"
  printf '#!/bin/sh\n# MOSE: distribution criu with the inet socket-option fix (scripts/provision-criu.sh)\nLD_PRELOAD=%s exec /usr/sbin/criu "$@"\n' "$SOCKOPT_LIB" > "$WRAPPER.tmp"
  chmod 0755 "$WRAPPER.tmp"; mv "$WRAPPER.tmp" "$WRAPPER"
  log "distribution criu works: $(/usr/sbin/criu --version | head -1), wrapped at $WRAPPER"
  exit 0
fi

log "distribution criu missing or unusable here; provisioning Debian $SUITE criu into $PREFIX"
if [[ -x "$PREFIX/root/usr/sbin/criu" ]]; then
  SKIP_FETCH=1
fi
APTDIR="$PREFIX/apt"
if [[ -z "${SKIP_FETCH:-}" ]]; then
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/etc/preferences.d" "$APTDIR/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main" > "$APTDIR/etc/sources.list"
: > "$APTDIR/etc/preferences"
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
: > "$APTDIR/status"
apt-get "${APTOPTS[@]}" update -qq

# criu, its compel library and every shared library it loads, from one suite,
# so that the private loader and libc match.
PKGS=(criu libcompel1 libc6 libgnutls30t64 libnftables1 libnl-3-200 libprotobuf-c1
  libnet1 libbsd0 libmd0 libuuid1 libp11-kit0 libidn2-0 libunistring5 libtasn1-6
  libnettle8t64 libhogweed6t64 libgmp10 libffi8 libmnl0 libnftnl11 libjansson4
  libxtables12 libedit2 libtinfo6 libgcc-s1 libcap2 libzstd1 liblz4-1 liblzma5 libbz2-1.0 zlib1g libselinux1 libpcre2-8-0)
cd "$APTDIR/debs"
for p in "${PKGS[@]}"; do
  if ! ls "${p}"_*.deb >/dev/null 2>&1; then
    apt-get "${APTOPTS[@]}" download -qq "$p" || log "warning: could not download $p (may be unneeded)"
  fi
done
ROOT="$PREFIX/root"
rm -rf "$ROOT.new"; mkdir -p "$ROOT.new"
for d in ./*.deb; do dpkg -x "$d" "$ROOT.new"; done
rm -rf "$ROOT"; mv "$ROOT.new" "$ROOT"
fi
ROOT="$PREFIX/root"

LIBPATH="$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu"
LOADER="$ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
[[ -e "$LOADER" ]] || LOADER="$ROOT/lib64/ld-linux-x86-64.so.2"
[[ -e "$LOADER" ]] || { log "error: no dynamic loader found in $ROOT"; exit 1; }
BIN="$ROOT/usr/sbin/criu"
[[ -x "$BIN" ]] || { log "error: criu binary missing at $BIN"; exit 1; }

# missing libraries are a provisioning error, not a runtime surprise
if "$LOADER" --library-path "$LIBPATH" --list "$BIN" | grep -q 'not found'; then
  "$LOADER" --library-path "$LIBPATH" --list "$BIN" | grep 'not found' >&2
  log "error: criu has unresolved libraries in $ROOT"; exit 1
fi

build_sockopt
mkdir -p "$(dirname "$WRAPPER")"
cat > "$WRAPPER.tmp" <<WRAP
#!/bin/sh
# MOSE: Debian $SUITE criu run through its own loader and libraries, with the
# inet socket-option fix preloaded (see scripts/provision-criu.sh, mose-sockopt.c)
exec "$LOADER" --library-path "$LIBPATH" --preload "$SOCKOPT_LIB" "$BIN" "\$@"
WRAP
chmod 0755 "$WRAPPER.tmp"; mv "$WRAPPER.tmp" "$WRAPPER"

if ! works "$WRAPPER"; then
  "$WRAPPER" check >&2 || true
  log "error: provisioned criu does not pass 'criu check'"; exit 1
fi
log "ok: $("$WRAPPER" --version | head -1) via $WRAPPER"
