#!/usr/bin/env bash
# MOSE node set-up on a fresh Debian 12 machine (run as root). Idempotent.
#
#  - Debian packages: containerd, runc, crun, iptables (CRIU locks the
#    container's network with it), busybox-static (test images), protoc
#    (gRPC client in the tests), iproute2, libclang-dev (the userfaultfd
#    crate's bindings are generated from <linux/userfaultfd.h> by bindgen at
#    build time, which loads libclang), containernetworking-plugins (CNI's
#    bridge and static IPAM give containers their service address),
#    sockperf and iperf3 (the network benchmark's workloads and clients).
#  - A working CRIU >= 4 (scripts/provision-criu.sh), its kernel-feature
#    cache made once per boot (scripts/criu-kdat.sh), and fs.pipe-max-size
#    >= 4 MiB now and at boot (CRIU's lazy dump; /etc/sysctl.d/60-mose.conf).
#  - containerd 1.7 in a private prefix for the test matrix
#    (scripts/provision-containerd.sh; the system keeps its containerd).
#  - Builds the workspace and installs containerd-shim-mose-v2 where
#    containerd finds it, plus the containerd config snippet.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PREFIX=${MOSE_PREFIX:-/usr/local}
PROFILE=${MOSE_PROFILE:-release}

log() { echo "[setup] $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  echo "setup.sh must run as root (it installs packages and the shim)" >&2
  exit 1
fi

PKGS=(containerd runc crun iptables busybox-static jq protobuf-compiler iproute2 ca-certificates pkg-config gcc libc6-dev redis-server util-linux libclang-dev containernetworking-plugins sockperf iperf3)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  # without recommends: Debian 12 recommends its criu 3.17, which cannot run on recent kernels
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi
# Podman 4.3 (+ conmon): the migration benchmark's `podman` baseline, the MOSE
# paper's state of the art (integration/src/baseline/podman.rs). Rootful with
# host networking it needs none of its recommends (slirp4netns, fuse-overlayfs,
# uidmap, buildah); it checkpoints through runc and the CRIU provisioned below.
# Its configuration is MOSE's own (/run/mose/podman/containers.conf, written by
# the baseline): /etc/containers is left as Debian ships it.
if ! dpkg-query -W -f='${Status}' podman 2>/dev/null | grep -q "install ok installed"; then
  log "installing podman"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman conmon >/dev/null
else
  log "podman present"
fi

"$ROOT/scripts/provision-criu.sh"
# CRIU's kernel probe cached where /run is not a tmpfs (~40 ms per CRIU run)
"$ROOT/scripts/criu-kdat.sh"
# CRIU's lazy page server grows its pipe to 4 MiB; without CAP_SYS_RESOURCE
# that needs fs.pipe-max-size >= 4 MiB, or the lazy dump behind post-copy
# fails (see docs/migration.md). Set now and at every boot; a larger value
# the operator chose stays.
PIPE_MIN=4194304
if (( $(cat /proc/sys/fs/pipe-max-size) < PIPE_MIN )); then
  sysctl -qw fs.pipe-max-size=$PIPE_MIN
  log "fs.pipe-max-size set to $PIPE_MIN"
fi
if [[ ! -e /etc/sysctl.d/60-mose.conf ]] || ! grep -q '^fs.pipe-max-size' /etc/sysctl.d/60-mose.conf; then
  mkdir -p /etc/sysctl.d
  echo "# MOSE: CRIU's lazy page server (post-copy's lazy dump) needs pipes of 4 MiB" >> /etc/sysctl.d/60-mose.conf
  echo "fs.pipe-max-size = $(( $(cat /proc/sys/fs/pipe-max-size) > PIPE_MIN ? $(cat /proc/sys/fs/pipe-max-size) : PIPE_MIN ))" >> /etc/sysctl.d/60-mose.conf
  log "fs.pipe-max-size persisted in /etc/sysctl.d/60-mose.conf"
fi
# only the test matrix needs it: a failure is reported, not fatal to set-up
"$ROOT/scripts/provision-containerd.sh" || log "warning: containerd 1.7 not provisioned; scripts/test-containerd-matrix.sh will report it missing"
"$ROOT/scripts/provision-youki.sh" || log "warning: youki not provisioned; the youki tests (tests/tests/youki.rs) will say they are skipped"

if ! command -v cargo >/dev/null; then
  if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "cargo not found: install a Rust toolchain (rustup) first" >&2
    exit 1
  fi
fi

log "building the workspace ($PROFILE)"
if [[ "$PROFILE" == release ]]; then
  cargo build --release --workspace --bins --quiet
else
  cargo build --workspace --bins --quiet
fi
# where cargo put them: CARGO_TARGET_DIR (or a configured target dir) moves them
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
BIN="${TARGET_DIR:-$ROOT/target}/$PROFILE"

install -D -m 0755 "$BIN/containerd-shim-mose-v2" "$PREFIX/bin/containerd-shim-mose-v2"
install -D -m 0755 "$BIN/mose-plugin" "$PREFIX/bin/mose-plugin"
install -D -m 0755 "$BIN/mosectl" "$PREFIX/bin/mosectl"
# the NRI plugin refusing malformed mose.io/* annotations at CreateContainer
# (containerd >= 1.7 with NRI enabled; see docs/kubernetes.md)
install -D -m 0755 "$BIN/mose-nri" "$PREFIX/bin/mose-nri"
# the OCI hook the shim adds to containers with a service address; it must
# sit next to the shim (or on its PATH)
install -D -m 0755 "$BIN/mose-hook" "$PREFIX/bin/mose-hook"
# the pod network's CNI plugin (pods that continue another node's pod keep
# its address; see docs/kubernetes.md): where containerd's CRI looks for
# plugins by default
install -D -m 0755 "$BIN/mose-pod-cni" /opt/cni/bin/mose-pod-cni
log "installed containerd-shim-mose-v2 ($("$PREFIX/bin/containerd-shim-mose-v2" -v | tail -1 | xargs)), mose-plugin, mosectl, mose-nri and mose-hook in $PREFIX/bin, mose-pod-cni in /opt/cni/bin"
# the service network's CNI configuration (kept when the operator changed it)
if [[ ! -f /etc/mose/cni/svc.conflist ]]; then
  install -D -m 0644 "$ROOT/config/cni/svc.conflist" /etc/mose/cni/svc.conflist
  log "installed /etc/mose/cni/svc.conflist (CNI network \"svc\" on bridge mose-svc0)"
fi

# containerd configuration: the snippet registers runtime "mose"
install -D -m 0644 "$ROOT/config/containerd-mose.toml" /etc/containerd/conf.d/mose.toml
install -D -m 0644 "$ROOT/config/mose-runtime.toml" /etc/mose/runtime.toml
CFG=/etc/containerd/config.toml
if [[ ! -f "$CFG" ]]; then
  printf 'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n' > "$CFG"
  log "wrote $CFG importing /etc/containerd/conf.d/*.toml"
elif ! grep -q '^imports' "$CFG"; then
  # imports must be a top-level key: put it right after the version line
  if grep -q '^version' "$CFG"; then
    sed -i '0,/^version.*/s//&\nimports = ["\/etc\/containerd\/conf.d\/*.toml"]/' "$CFG"
  else
    sed -i '1i imports = ["/etc/containerd/conf.d/*.toml"]' "$CFG"
  fi
  log "added imports of /etc/containerd/conf.d/*.toml to $CFG"
elif ! grep -q 'conf.d' "$CFG"; then
  log "warning: $CFG has its own imports line; add \"/etc/containerd/conf.d/*.toml\" to it"
fi
log "done: use 'ctr run --runtime io.containerd.mose.v2 ...' or runtime handler 'mose' (CRI)"
