#!/usr/bin/env bash
# CRIU's kernel-feature cache on nodes whose /run is not a tmpfs. Idempotent.
#
# Every CRIU run starts by probing the kernel ("kerndat": ~40 ms here, in
# the dump and again in the restore, so inside a migration's downtime).
# CRIU keeps the result in /run/criu.kdat, but only saves it when /run is a
# tmpfs (so that a reboot into another kernel cannot leave a stale one;
# criu/kerndat.c, kerndat_save_cache). On hosts where /run is a plain
# directory of the root file system, CRIU never saves it and pays the probe
# every time. It does load a cache it finds there, whatever the file system.
#
# So this script runs `criu check` once in a private mount namespace with a
# tmpfs on /run, where CRIU saves the cache, and installs that file as
# /run/criu.kdat. It records the boot it was made in (MOSE_KDAT_BOOT):
# containerd-shim-mose-v2 removes a cache made in another boot before it
# runs CRIU (the kernel may have changed), and this script makes a new one.
set -euo pipefail

log() { echo "[criu-kdat] $*" >&2; }

KDAT=/run/criu.kdat
BOOT_RECORD=${MOSE_KDAT_BOOT:-/run/mose/criu-kdat.boot}
boot_id=$(cat /proc/sys/kernel/random/boot_id)

if [[ $(stat -f -c %T /run) == tmpfs ]]; then
  log "/run is a tmpfs: CRIU keeps its own cache ($KDAT)"
  exit 0
fi
if [[ -f $KDAT && -f $BOOT_RECORD && $(cat "$BOOT_RECORD") == "$boot_id" ]]; then
  log "ok: $KDAT made in this boot"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# a leftover from CRIU's own failed save blocks every later one (O_EXCL)
rm -f "$KDAT.tmp"
if ! unshare -m sh -c "mount -t tmpfs -o size=1m mose-kdat /run && criu check >'$tmp/check.log' 2>&1; cp /run/criu.kdat '$tmp/criu.kdat'"; then
  log "warning: CRIU made no kernel-feature cache (criu check: $(tail -1 "$tmp/check.log" 2>/dev/null)); every CRIU run probes the kernel"
  exit 0
fi
install -m 0600 "$tmp/criu.kdat" "$KDAT.mose"
mv "$KDAT.mose" "$KDAT"
mkdir -p "$(dirname "$BOOT_RECORD")"
echo "$boot_id" > "$BOOT_RECORD"
log "installed $KDAT (CRIU's kernel probe, made once for this boot)"
