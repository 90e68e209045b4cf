#!/usr/bin/env bash
# CRI validation of MOSE: cri-tools' critest (v1.26.1, ../shared/bin) through
# containerd's CRI plugin, once with the runtime handler `runc`
# (io.containerd.runc.v2) and once with `mose` (io.containerd.mose.v2), plus
# terminal execs (`crictl exec -it`) under both handlers, counting lost output.
#
# Usage (as root, from anywhere):
#   scripts/critest.sh [all|critest|tty] [--tty-count N] [--no-setup] [-- CRITEST-ARGS...]
#     all      (default) critest under both handlers, then the tty execs
#     critest  only critest;  tty  only the tty execs
#     --tty-count N   terminal execs per handler (default 200)
#     --no-setup      do not run scripts/setup.sh first (the installed shim is used)
#     CRITEST-ARGS    passed to critest, e.g. -- -ginkgo.focus=Streaming
#
# Everything runs on this machine, with no network beyond 127.0.0.1 (except
# apt, when a Debian package or .deb is missing):
#  - Debian packages (installed only if missing, --no-install-recommends):
#    docker-registry, skopeo, containernetworking-plugins, jq, ...
#  - The images critest pulls are built here as OCI archives from Debian
#    packages: Debian's busybox (+ pgrep and ipcs from procps/util-linux) as
#    registry.k8s.io/e2e-test-images/busybox:1.29-2, Debian's nginx and
#    apache2 (downloaded .debs, unpacked into the image, cached in
#    target/critest/debs) as nginx:1.14-2, hostnet-nginx and httpd:2.4.39-4,
#    a static setuid program as nonewprivs:1.3, and cri-tools' own
#    gcr.io/k8s-staging-cri-tools/test-image-* images. They are served by a
#    private docker-registry on 127.0.0.1 and containerd's CRI
#    registry host configuration (hosts.toml, `server`) maps registry.k8s.io
#    and gcr.io to it alone.
#    Not reproducible: test-image-digest@sha256:9700f9a2... (a fixed digest).
#  - A private containerd (config version 2, root/state/sockets in a temp
#    dir) with runtimes `runc` and `mose` (the latter as in
#    config/containerd-mose.toml), a bridge+portmap CNI network in a private
#    conf_dir, and a locally built pause image in the k8s.io namespace.
#
# Writes results/critest-{runc,mose}.txt (verbose output) and .xml (JUnit),
# results/critest-tty.txt and results/critest-containerd.log, prints a
# comparison, and exits non-zero if a spec passes under runc but not under
# mose, or a terminal exec under mose loses its output. Stops and removes
# everything it started (daemon, registry, shims, mounts, network namespaces,
# CNI state, its bridge and iptables chains, critest's temp dirs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PATH="$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

SHARED_BIN=${MOSE_SHARED_BIN:-$ROOT/../shared/bin}
CRICTL=$SHARED_BIN/crictl
CRITEST=$SHARED_BIN/critest
RESULTS=$ROOT/results
CACHE=$ROOT/target/critest
HANDLERS=(runc mose)
MODE=all
TTY_COUNT=200
SETUP=1
CRITEST_ARGS=()

log() { echo "[critest] $*" >&2; }
die() { log "error: $*"; exit 1; }

while (($#)); do
  case $1 in
    all|critest|tty) MODE=$1 ;;
    --tty-count) TTY_COUNT=${2:?--tty-count needs a number}; shift ;;
    --no-setup) SETUP=0 ;;
    --) shift; CRITEST_ARGS=("$@"); break ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[[ $TTY_COUNT =~ ^[0-9]+$ ]] || die "--tty-count: not a number: $TTY_COUNT"
[[ $(id -u) -eq 0 ]] || die "must run as root (it starts containerd and a CNI network)"
[[ -x $CRICTL && -x $CRITEST ]] || die "crictl/critest not found in $SHARED_BIN"

START_TS=$(date +%s)

# ---------------------------------------------------------------- set-up
if ((SETUP)); then
  log "running scripts/setup.sh"
  scripts/setup.sh
fi
command -v containerd-shim-mose-v2 >/dev/null ||
  die "containerd-shim-mose-v2 is not on PATH: run scripts/setup.sh"

PKGS=(containerd runc iptables iproute2 util-linux procps gcc libc6-dev
      tar coreutils jq docker-registry skopeo containernetworking-plugins)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# .debs unpacked into images (never installed on the host: no services)
DEBS=(busybox nginx apache2-bin libapr1 libaprutil1)
mkdir -p "$CACHE/debs"
for d in "${DEBS[@]}"; do
  if ! compgen -G "$CACHE/debs/${d}_*.deb" >/dev/null; then
    log "downloading Debian package $d (cached in target/critest/debs)"
    (cd "$CACHE/debs" && apt-get download -q "$d" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) ||
      { apt-get update -qq; (cd "$CACHE/debs" && apt-get download -q "$d"); }
  fi
done

# ---------------------------------------------------------------- state and cleanup
WORK=$(mktemp -d /tmp/mose-critest-XXXXXX)
SOCK=$WORK/containerd.sock
CTR=(ctr --address "$SOCK" --namespace k8s.io)
CRICTL_CFG=$WORK/crictl.yaml
CD_PID=
REG_PID=
BRIDGE=mose-cri0
# What this run may add to the host beside its temp dir, recorded before and
# after it (other users of this machine may add their own meanwhile: only
# network namespaces named like the CRI plugin's, shared memory segments of
# critest's size, and empty directories of this list count).
RUN_DIRS=(/run/containerd/runc/k8s.io /run/containerd/runc /run/containerd/s /run/containerd
          /run/mose/console /run/mose/runc /run/mose)
snap() ( # a subshell: its pipelines may fail
  set +e +o pipefail
  { ls -1 /run/netns 2>/dev/null || true; } | grep '^cni-' | sed "s/^/netns /"
  { ipcs -m 2>/dev/null || true; } | awk '$2 ~ /^[0-9]+$/ && $5 == 1048576 {print "shm " $2}'
  local d
  for d in "${RUN_DIRS[@]}"; do [[ -d $d ]] && echo "dir $d"; done
  return 0
)
# FNV-1a of the containerd address: the MOSE shim's runc state root is
# /run/mose/runc/<that>/<namespace> (shim/src/container.rs)
fnv1a() {
  local s=$1 h=$((0xcbf29ce484222325)) i c
  for ((i = 0; i < ${#s}; i++)); do
    printf -v c '%d' "'${s:i:1}"
    h=$(( (h ^ c) * 0x100000001b3 ))
  done
  printf '%016x' "$h"
}

# processes whose command line names our temp dir (shims: -address $SOCK)
our_pids() {
  local p
  for p in /proc/[0-9]*; do
    [[ ${p#/proc/} == "$$" ]] && continue
    tr "\0" " " 2>/dev/null < "$p/cmdline" | grep -qF -- "$WORK/" && echo "${p#/proc/}"
  done
  return 0
}

stop_pid() { # pid [seconds]
  local pid=$1 t=${2:-10} i
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < t * 10; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
}

remove_pods() {
  [[ -S $SOCK ]] || return 0
  "$CRICTL" -c "$CRICTL_CFG" stopp $("$CRICTL" -c "$CRICTL_CFG" pods -q 2>/dev/null) >/dev/null 2>&1 || true
  "$CRICTL" -c "$CRICTL_CFG" rmp -fa >/dev/null 2>&1 || true
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  log "cleaning up"
  if [[ -n $CD_PID ]] && kill -0 "$CD_PID" 2>/dev/null; then
    remove_pods
    "${CTR[@]}" tasks ls -q 2>/dev/null | while read -r t; do "${CTR[@]}" tasks kill -s KILL "$t" >/dev/null 2>&1; done
    cp "$WORK/containerd.log" "$RESULTS/critest-containerd.log" 2>/dev/null
  fi
  stop_pid "$CD_PID" 20
  stop_pid "$REG_PID" 5
  local p
  for p in $(our_pids); do
    log "stopping leftover process $p: $(tr '\0' ' ' 2>/dev/null < /proc/$p/cmdline | cut -c1-120)"
    stop_pid "$p" 5
  done
  # mounts under the temp dir (overlay rootfs, sandbox shm), deepest first
  awk -v w="$WORK/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
  done
  # the MOSE shim's runc state root for this daemon (runc's own dirs go with the containers)
  rm -rf "/run/mose/runc/$(fnv1a "$SOCK")"
  snap | sort > "$WORK/after"
  local kind what
  comm -13 "$WORK/before" "$WORK/after" | while read -r kind what; do
    case $kind in
      netns) # a pod's network namespace, if no process is in it any more
        [[ -z $(ip netns pids "$what" 2>/dev/null) ]] && ip netns delete "$what" 2>/dev/null &&
          log "removed leftover network namespace $what" ;;
      shm) # segments critest's HostIpc specs make with ipcmk on the host
        ipcs -m -i "$what" 2>/dev/null | grep -q 'nattch=0' && ipcrm -m "$what" 2>/dev/null ;;
      dir) rmdir "$what" 2>/dev/null ;;  # created by this run and empty (RUN_DIRS is deepest first)
    esac
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
  if ((HAD_HOSTPORT == 0)) && iptables -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1; then
    # portmap's chains: remove them if this run created them and they are empty
    if [[ $(iptables -t nat -S CNI-HOSTPORT-DNAT | wc -l) -le 1 ]]; then
      iptables -t nat -D PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT 2>/dev/null
      iptables -t nat -D OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT 2>/dev/null
      iptables -t nat -D POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ 2>/dev/null
      local c
      for c in CNI-HOSTPORT-DNAT CNI-HOSTPORT-SETMARK CNI-HOSTPORT-MASQ; do
        iptables -t nat -F "$c" 2>/dev/null; iptables -t nat -X "$c" 2>/dev/null
      done
    fi
  fi
  [[ $IP_FORWARD == 0 ]] && sysctl -qw net.ipv4.ip_forward=0
  rm -rf "$WORK" 2>/dev/null || log "warning: could not remove $WORK"
  # report what is left, if anything
  local left
  left=$( (our_pids; awk -v w="$WORK/" 'index($5, w) == 1 {print "mount " $5}' /proc/self/mountinfo
           ip link show "$BRIDGE" 2>/dev/null | head -1; [[ -e $WORK ]] && echo "$WORK") | head -20)
  [[ -z $left ]] || log "warning: left behind: $left"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
snap | sort > "$WORK/before"
iptables -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1 && HAD_HOSTPORT=1 || HAD_HOSTPORT=0
IP_FORWARD=$(sysctl -n net.ipv4.ip_forward)

# ---------------------------------------------------------------- images
IMG=$WORK/images
mkdir -p "$IMG"
ARCH=amd64
[[ $(uname -m) == x86_64 ]] || die "only x86_64 (amd64) is supported"
TAR=(tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu)
BLOBS=

sha() { sha256sum "$1" | cut -d' ' -f1; }

# layer DIR -> OCI layer (uncompressed tar) in the current layout; prints its digest
make_layer() {
  local dir=$1 t=$WORK/layer.tar d
  (cd "$dir" && LC_ALL=C ls -A | "${TAR[@]}" -cf "$t" -T -)
  d=$(sha "$t")
  mv "$t" "$BLOBS/$d"
  echo "$d"
}

# oci_archive OUT REF CONFIG-JSON(.config part) LAYER-DIGEST...
oci_archive() {
  local out=$1 ref=$2 cfg=$3; shift 3
  local lay=$WORK/layout diffs layers c m
  rm -rf "$lay"; mkdir -p "$lay/blobs/sha256"
  for d in "$@"; do cp "$BLOBS/$d" "$lay/blobs/sha256/$d"; done
  diffs=$(printf '"sha256:%s",' "$@"); diffs="[${diffs%,}]"
  layers=$(for d in "$@"; do
    jq -cn --arg d "sha256:$d" --argjson s "$(stat -c %s "$BLOBS/$d")" \
      '{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $d, size: $s}'
  done | jq -cs .)
  jq -cn --arg arch "$ARCH" --argjson cfg "$cfg" --argjson diffs "$diffs" \
    '{architecture: $arch, os: "linux", config: $cfg, rootfs: {type: "layers", diff_ids: $diffs},
      history: [{created_by: "scripts/critest.sh"}]}' > "$lay/config.json"
  c=$(sha "$lay/config.json"); mv "$lay/config.json" "$lay/blobs/sha256/$c"
  jq -cn --arg c "sha256:$c" --argjson cs "$(stat -c %s "$lay/blobs/sha256/$c")" --argjson layers "$layers" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
      layers: $layers}' > "$lay/manifest.json"
  m=$(sha "$lay/manifest.json"); mv "$lay/manifest.json" "$lay/blobs/sha256/$m"
  jq -cn --arg m "sha256:$m" --argjson ms "$(stat -c %s "$lay/blobs/sha256/$m")" --arg ref "$ref" --arg arch "$ARCH" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m, size: $ms,
                   platform: {architecture: $arch, os: "linux"},
                   annotations: {"org.opencontainers.image.ref.name": $ref, "io.containerd.image.name": $ref}}]}' \
    > "$lay/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$lay/oci-layout"
  (cd "$lay" && "${TAR[@]}" -cf "$out" oci-layout index.json blobs)
}

# copy_bin ROOTFS SRC DEST [STAGE]: a dynamically linked program and its
# libraries (resolved on the host, or in STAGE, an unpacked .deb tree)
copy_bin() {
  local rootfs=$1 src=$2 dest=$3 stage=${4:-} libs l
  install -D -m 0755 "$src" "$rootfs$dest"
  libs=$(LD_LIBRARY_PATH=${stage:+$stage/usr/lib/x86_64-linux-gnu} ldd "$src" 2>&1) ||
    { [[ $libs == *"not a dynamic executable"* ]] && return 0; die "ldd $src: $libs"; }
  [[ $libs != *"not found"* ]] || die "libraries of $src not found: $libs"
  for l in $(awk '/=> \// {print $3} /^[[:space:]]*\/[^ ]*ld-linux/ {print $1}' <<<"$libs"); do
    local d=${l#"$stage"}
    [[ -e $rootfs$d ]] || install -D -m 0755 "$(readlink -f "$l")" "$rootfs$d"
  done
  # glibc loads libgcc_s when a thread exits or is cancelled
  l=/lib/x86_64-linux-gnu/libgcc_s.so.1
  [[ -e $rootfs$l ]] || install -D -m 0755 "$(readlink -f "$l")" "$rootfs$l"
}

build_images() {
  BLOBS=$WORK/blobs; mkdir -p "$BLOBS"
  local b=$WORK/build r
  mkdir -p "$b"

  # static helpers: the sandbox's pause and nonewprivs' setuid probe
  cat > "$b/pause.c" <<'EOF'
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGTERM, quit); signal(SIGINT, quit); signal(SIGCHLD, reap);
  for (;;) pause();
}
EOF
  cat > "$b/nnp.c" <<'EOF'
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", (int)geteuid()); return 0; }
EOF
  gcc -static -O2 -o "$b/pause" "$b/pause.c"
  gcc -static -O2 -o "$b/nnp" "$b/nnp.c"

  # Debian packages unpacked (not installed): busybox, nginx, apache2
  local st=$WORK/stage deb port
  mkdir -p "$st"
  for deb in "${DEBS[@]}"; do dpkg -x "$(ls "$CACHE/debs/${deb}"_*.deb | tail -1)" "$st"; done

  # base: the busybox image. Debian's busybox (not busybox-static, whose
  # shell runs its own applets in-process: /bin/ls masked by MaskedPaths or
  # an httpd earlier in PATH would go unnoticed), its applets as hard links
  # as in the busybox image; pgrep and ipcs, which Debian's build lacks and
  # busybox 1.29's has, from procps and util-linux.
  r=$b/base
  mkdir -p "$r"/{bin,dev,etc,home,proc,sys,usr/bin,usr/sbin,var/spool/mail,var/www}
  install -d -m 0700 "$r/root"; install -d -m 1777 "$r/tmp"
  copy_bin "$r" "$st/bin/busybox" /bin/busybox "$st"
  local a
  for a in $("$st/bin/busybox" --list); do
    [[ $a == busybox || -e $r/bin/$a ]] || ln "$r/bin/busybox" "$r/bin/$a"
  done
  copy_bin "$r" "$(command -v pgrep)" /usr/bin/pgrep
  copy_bin "$r" "$(command -v ipcs)" /usr/bin/ipcs
  cat > "$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
EOF
  cat > "$r/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
mail:x:8:
kmem:x:9:
wheel:x:10:root
audio:x:29:
www-data:x:33:
operator:x:37:
staff:x:50:
users:x:100:
nogroup:x:65534:
EOF
  local BASE; BASE=$(make_layer "$r")
  local PATHENV='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'
  local SH="{\"Env\":[$PATHENV],\"Cmd\":[\"sh\"]}"

  # the sandbox image: pause alone
  r=$b/pause-root; mkdir -p "$r"; install -m 0755 "$b/pause" "$r/pause"
  oci_archive "$IMG/pause.tar" "$PAUSE_IMAGE" '{"Cmd":["/pause"]}' "$(make_layer "$r")"

  # registry.k8s.io/e2e-test-images
  oci_archive "$IMG/busybox.tar" busybox "$SH" "$BASE"

  r=$b/nnp-root; install -D -m 4755 "$b/nnp" "$r/usr/local/bin/nnp"
  oci_archive "$IMG/nonewprivs.tar" nonewprivs "{\"Env\":[$PATHENV],\"Cmd\":[\"/usr/local/bin/nnp\"]}" "$BASE" "$(make_layer "$r")"

  # nginx (Debian's) listening on PORT
  for port in 80 12003; do
    r=$b/nginx-$port
    copy_bin "$r" "$st/usr/sbin/nginx" /usr/sbin/nginx "$st"
    mkdir -p "$r"/{var/log/nginx,var/lib/nginx,var/cache/nginx,var/run,run,usr/share/nginx/html,etc/nginx}
    { cat "$b/base/etc/passwd"; echo 'nginx:x:101:101:nginx user:/nonexistent:/bin/false'; } > "$r/etc/passwd"
    { cat "$b/base/etc/group"; echo 'nginx:x:101:'; } > "$r/etc/group"
    echo '<html><body><h1>Welcome to nginx!</h1></body></html>' > "$r/usr/share/nginx/html/index.html"
    cat > "$r/etc/nginx/nginx.conf" <<EOF
user nginx;
worker_processes 1;
error_log stderr notice;
pid /var/run/nginx.pid;
events { worker_connections 1024; }
http {
  access_log /dev/stdout;
  server {
    listen $port;
    server_name localhost;
    location / { root /usr/share/nginx/html; index index.html; }
  }
}
EOF
    eval "NGINX_$port=\$(make_layer \"\$r\")"
  done
  local NGINXCFG="{\"Env\":[$PATHENV],\"Cmd\":[\"nginx\",\"-g\",\"daemon off;\"],\"ExposedPorts\":{\"80/tcp\":{}},\"StopSignal\":\"SIGTERM\"}"
  oci_archive "$IMG/nginx.tar" nginx "$NGINXCFG" "$BASE" "$NGINX_80"
  oci_archive "$IMG/hostnet-nginx.tar" hostnet-nginx "${NGINXCFG//80\/tcp/12003/tcp}" "$BASE" "$NGINX_12003"

  # httpd (Debian's apache2) as the httpd image runs it: httpd-foreground
  r=$b/httpd
  local ar=/usr/local/apache2 m
  copy_bin "$r" "$st/usr/sbin/apache2" "$ar/bin/httpd" "$st"
  for m in mpm_event authz_core dir; do
    copy_bin "$r" "$st/usr/lib/apache2/modules/mod_$m.so" "$ar/modules/mod_$m.so" "$st"
  done
  mkdir -p "$r$ar/logs" "$r$ar/htdocs" "$r/etc/apache2"
  echo '<html><body><h1>It works!</h1></body></html>' > "$r$ar/htdocs/index.html"
  printf '#!/bin/sh\nset -e\nrm -f /usr/local/apache2/logs/httpd.pid\nexec httpd -DFOREGROUND "$@"\n' > "$r$ar/bin/httpd-foreground"
  chmod 0755 "$r$ar/bin/httpd-foreground"
  cat > "$r/etc/apache2/apache2.conf" <<'EOF'
ServerRoot "/usr/local/apache2"
Listen 80
LoadModule mpm_event_module modules/mod_mpm_event.so
LoadModule authz_core_module modules/mod_authz_core.so
LoadModule dir_module modules/mod_dir.so
User daemon
Group daemon
ServerName localhost
DefaultRuntimeDir logs
PidFile logs/httpd.pid
DocumentRoot "/usr/local/apache2/htdocs"
<Directory "/usr/local/apache2/htdocs">
    Require all granted
</Directory>
DirectoryIndex index.html
ErrorLog /proc/self/fd/2
LogLevel warn
LogFormat "%h %l %u %t \"%r\" %>s %b" common
CustomLog /proc/self/fd/1 common
EOF
  oci_archive "$IMG/httpd.tar" httpd \
    "{\"Env\":[\"PATH=$ar/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Cmd\":[\"httpd-foreground\"],\"WorkingDir\":\"$ar\",\"ExposedPorts\":{\"80/tcp\":{}},\"StopSignal\":\"SIGWINCH\"}" \
    "$BASE" "$(make_layer "$r")"

  # gcr.io/k8s-staging-cri-tools: images/image-user, image-predefined-group, image-test
  local u
  for u in user-uid:1002 user-username:www-data user-uid-group:1003:1004 user-username-group:www-data:1004; do
    oci_archive "$IMG/test-image-${u%%:*}.tar" "test-image-${u%%:*}" \
      "{\"Env\":[$PATHENV],\"Cmd\":[\"sh\"],\"User\":\"${u#*:}\"}" "$BASE"
  done
  r=$b/predefined; mkdir -p "$r/etc" "$r/home/default-user"
  { cat "$b/base/etc/passwd"; echo 'default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh'; } > "$r/etc/passwd"
  { cat "$b/base/etc/group"; echo 'default-user:x:1000:'; echo 'group-defined-in-image:x:50000:default-user'; } > "$r/etc/group"
  oci_archive "$IMG/test-image-predefined-group.tar" test-image-predefined-group \
    "{\"Env\":[$PATHENV],\"Cmd\":[\"sh\"],\"User\":\"1000\"}" "$BASE" "$(make_layer "$r")"
  local t
  for t in test-image-1 test-image-2 test-image-3 test-image-latest test-image-digest same-image test all; do
    r=$b/file-$t; mkdir -p "$r"; : > "$r/$t"
    oci_archive "$IMG/file-$t.tar" "$t" "$SH" "$BASE" "$(make_layer "$r")"
  done
}

# registry name -> archive
IMAGES=(
  "e2e-test-images/busybox:1.29-2=busybox"
  "e2e-test-images/nginx:1.14-2=nginx"
  "e2e-test-images/httpd:2.4.39-4=httpd"
  "e2e-test-images/nonewprivs:1.3=nonewprivs"
  "k8s-staging-cri-tools/hostnet-nginx-$ARCH:latest=hostnet-nginx"
  "k8s-staging-cri-tools/test-image-user-uid:latest=test-image-user-uid"
  "k8s-staging-cri-tools/test-image-user-username:latest=test-image-user-username"
  "k8s-staging-cri-tools/test-image-user-uid-group:latest=test-image-user-uid-group"
  "k8s-staging-cri-tools/test-image-user-username-group:latest=test-image-user-username-group"
  "k8s-staging-cri-tools/test-image-predefined-group:latest=test-image-predefined-group"
  "k8s-staging-cri-tools/test-image-latest:latest=file-test-image-latest"
  "k8s-staging-cri-tools/test-image-digest:latest=file-test-image-digest"
  "k8s-staging-cri-tools/test-image-1:latest=file-test-image-1"
  "k8s-staging-cri-tools/test-image-2:latest=file-test-image-2"
  "k8s-staging-cri-tools/test-image-3:latest=file-test-image-3"
  "k8s-staging-cri-tools/test-image-tags:1=file-same-image"
  "k8s-staging-cri-tools/test-image-tags:2=file-same-image"
  "k8s-staging-cri-tools/test-image-tags:3=file-same-image"
  "k8s-staging-cri-tools/test-image-tag:test=file-test"
  "k8s-staging-cri-tools/test-image-tag:all=file-all"
)
PAUSE_IMAGE=localhost/mose-critest/pause:1
BUSYBOX_IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2

log "building test images (OCI archives)"
build_images

# ---------------------------------------------------------------- registry
free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    [[ -z $(ss -Hltn "sport = :$p") ]] && { echo "$p"; return; }
  done
  die "no free port found"
}
wait_port() { # port seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
REG_PORT=$(free_port)
mkdir -p "$WORK/registry"
cat > "$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$REG_PORT
EOF
docker-registry serve "$WORK/registry.yml" > "$WORK/registry.log" 2>&1 &
REG_PID=$!
wait_port "$REG_PORT" 20 || { tail -20 "$WORK/registry.log" >&2; die "docker-registry did not start"; }
log "registry on 127.0.0.1:$REG_PORT; pushing ${#IMAGES[@]} images"
for e in "${IMAGES[@]}"; do
  skopeo copy -q --dest-tls-verify=false "oci-archive:$IMG/${e#*=}.tar" "docker://127.0.0.1:$REG_PORT/${e%%=*}" >/dev/null ||
    die "skopeo copy of ${e%%=*} failed"
done

# ---------------------------------------------------------------- CNI and containerd
subnet=
for n in 77 78 79 87 97; do
  ip -4 route | grep -q "^10\.244\.$n\." || { subnet=10.244.$n.0/24; break; }
done
[[ -n $subnet ]] || die "no free 10.244.x.0/24 subnet for the CNI bridge"
mkdir -p "$WORK/net.d" "$WORK/cni-ipam"
cat > "$WORK/net.d/10-mose-critest.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "mose-critest",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$subnet" }]],
                "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "$WORK/cni-ipam" }
    },
    { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
  ]
}
EOF

# registry.k8s.io and gcr.io served by the local registry alone: unlike
# `registry.mirrors`, whose mirrors fall back to the real registry (an image
# missing here, test-image-digest, would be looked up on the network), a
# hosts.toml `server` replaces it
for h in registry.k8s.io gcr.io; do
  mkdir -p "$WORK/certs.d/$h"
  printf 'server = "http://127.0.0.1:%s"\n[host."http://127.0.0.1:%s"]\n  capabilities = ["pull", "resolve"]\n' \
    "$REG_PORT" "$REG_PORT" > "$WORK/certs.d/$h/hosts.toml"
done

{
  cat <<EOF
version = 2
root = "$WORK/root"
state = "$WORK/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$WORK/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$WORK/certs.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "$WORK/opt"
EOF
  # the runtime handler `mose` exactly as shipped (config/containerd-mose.toml)
  sed -n '/^\[plugins/,$p' config/containerd-mose.toml
} > "$WORK/config.toml"
[[ -f /etc/mose/runtime.toml ]] || die "/etc/mose/runtime.toml missing: run scripts/setup.sh"

cat > "$CRICTL_CFG" <<EOF
runtime-endpoint: unix://$SOCK
image-endpoint: unix://$SOCK
timeout: 60
EOF

log "starting containerd ($(containerd --version | awk '{print $3}')), shim $(containerd-shim-mose-v2 -v 2>/dev/null | tail -1 | xargs)"
containerd --config "$WORK/config.toml" > "$WORK/containerd.log" 2>&1 &
CD_PID=$!
for _ in $(seq 300); do
  [[ -S $SOCK ]] && "$CRICTL" -c "$CRICTL_CFG" version >/dev/null 2>&1 && break
  kill -0 "$CD_PID" 2>/dev/null || break
  sleep 0.1
done
"$CRICTL" -c "$CRICTL_CFG" version >/dev/null 2>&1 ||
  { tail -30 "$WORK/containerd.log" >&2; ctr --address "$SOCK" plugins ls 2>/dev/null | grep -i cri >&2; die "containerd's CRI plugin is not serving"; }
"${CTR[@]}" images import "$IMG/pause.tar" >/dev/null
for _ in $(seq 50); do
  "$CRICTL" -c "$CRICTL_CFG" inspecti "$PAUSE_IMAGE" >/dev/null 2>&1 && break
  sleep 0.1
done
"$CRICTL" -c "$CRICTL_CFG" inspecti "$PAUSE_IMAGE" >/dev/null 2>&1 || die "sandbox image not visible to CRI"
mkdir -p "$RESULTS"

# ---------------------------------------------------------------- critest
SEED=${MOSE_CRITEST_SEED:-20261130}
run_critest() {
  local h=$1 rc=0 t0=$SECONDS
  log "critest --runtime-handler $h (seed $SEED)"
  rm -f "$RESULTS/critest-$h.xml" "$RESULTS/critest-$h.txt"
  # TMPDIR: the temp dirs critest makes (pod logs, volumes) go with ours
  mkdir -p "$WORK/critest-tmp"
  (cd "$WORK" && TMPDIR=$WORK/critest-tmp timeout 45m "$CRITEST" \
      -runtime-endpoint "unix://$SOCK" -image-endpoint "unix://$SOCK" \
      -runtime-handler "$h" \
      -ginkgo.seed "$SEED" -ginkgo.no-color -ginkgo.v -ginkgo.timeout 40m \
      -ginkgo.junit-report "$RESULTS/critest-$h.xml" \
      "${CRITEST_ARGS[@]}") > "$RESULTS/critest-$h.txt" 2>&1 || rc=$?
  remove_pods
  log "critest $h: exit $rc after $((SECONDS - t0)) s; $(grep -E '^(SUCCESS|FAIL)!' "$RESULTS/critest-$h.txt" | tail -1)"
}

# "<status>\t<spec>" per spec from a JUnit report
spec_results() {
  sed -n 's/.*<testcase name="\(\[It\][^"]*\)" classname="[^"]*" status="\([a-z]*\)".*/\2\t\1/p' "$1" |
    sed -e 's/&#39;/'"'"'/g' -e 's/&amp;/\&/g' -e 's/&quot;/"/g' -e 's/&lt;/</g' -e 's/&gt;/>/g' | sort -t$'\t' -k2
}

# ---------------------------------------------------------------- tty execs
# `crictl exec -it CID sh -c 'echo …'` under a terminal (script), TTY_COUNT times
run_tty() {
  local h=$1 pod ctr i out n rc lost=0 failed=0 t0=$SECONDS
  cat > "$WORK/tty-pod-$h.json" <<EOF
{"metadata": {"name": "mose-tty-$h", "namespace": "mose-critest", "uid": "mose-tty-$h-$$", "attempt": 0},
 "log_directory": "$WORK/tty-logs-$h", "linux": {}}
EOF
  cat > "$WORK/tty-ctr-$h.json" <<EOF
{"metadata": {"name": "sh"}, "image": {"image": "$BUSYBOX_IMAGE"},
 "command": ["sleep", "1000000"], "log_path": "sh.log", "linux": {}}
EOF
  mkdir -p "$WORK/tty-logs-$h"
  "$CRICTL" -c "$CRICTL_CFG" pull "$BUSYBOX_IMAGE" >/dev/null
  pod=$("$CRICTL" -c "$CRICTL_CFG" runp --runtime "$h" "$WORK/tty-pod-$h.json")
  ctr=$("$CRICTL" -c "$CRICTL_CFG" create "$pod" "$WORK/tty-ctr-$h.json" "$WORK/tty-pod-$h.json")
  "$CRICTL" -c "$CRICTL_CFG" start "$ctr" >/dev/null
  log "tty: $TTY_COUNT x 'crictl exec -it' under $h"
  for ((i = 1; i <= TTY_COUNT; i++)); do
    n=$((100000 + i * 7))
    # the command line carries the arithmetic, only the output carries the number
    rc=0
    out=$(script -qec "$CRICTL -c $CRICTL_CFG exec -it $ctr sh -c 'echo x\$((100000 + $i * 7))x'" /dev/null < /dev/null 2>&1) || rc=$?
    if ((rc)); then
      failed=$((failed + 1))
      echo "$h $i: exit $rc: $(tr -d '\r' <<<"$out" | head -3)" >> "$RESULTS/critest-tty.txt"
    elif [[ $out != *"x${n}x"* ]]; then
      lost=$((lost + 1))
      echo "$h $i: output lost: $(printf %q "$out" | cut -c1-200)" >> "$RESULTS/critest-tty.txt"
    fi
  done
  "$CRICTL" -c "$CRICTL_CFG" stopp "$pod" >/dev/null
  "$CRICTL" -c "$CRICTL_CFG" rmp "$pod" >/dev/null
  echo "$h: $TTY_COUNT execs, $lost lost output, $failed failed, $((SECONDS - t0)) s" | tee -a "$RESULTS/critest-tty.txt" >&2
  eval "TTY_LOST_$h=$lost; TTY_FAILED_$h=$failed"
}

STATUS=0
if [[ $MODE == all || $MODE == critest ]]; then
  for h in "${HANDLERS[@]}"; do run_critest "$h"; done
fi
if [[ $MODE == all || $MODE == tty ]]; then
  : > "$RESULTS/critest-tty.txt"
  for h in "${HANDLERS[@]}"; do run_tty "$h"; done
fi

# ---------------------------------------------------------------- report
echo
if [[ $MODE == all || $MODE == critest ]]; then
  printf '%-8s %7s %7s %8s\n' handler passed failed skipped
  for h in "${HANDLERS[@]}"; do
    if [[ ! -s $RESULTS/critest-$h.xml ]]; then
      printf '%-8s  no JUnit report (see results/critest-%s.txt)\n' "$h" "$h"; STATUS=1; continue
    fi
    spec_results "$RESULTS/critest-$h.xml" > "$WORK/specs-$h"
    printf '%-8s %7d %7d %8d\n' "$h" \
      "$(grep -c '^passed' "$WORK/specs-$h")" \
      "$(grep -Evc '^(passed|skipped|pending)' "$WORK/specs-$h")" \
      "$(grep -Ec '^(skipped|pending)' "$WORK/specs-$h")"
  done
  if [[ -s $WORK/specs-runc && -s $WORK/specs-mose ]]; then
    diffs=$(join -t$'\t' -1 2 -2 2 -a1 -a2 -e missing -o 0,1.1,2.1 "$WORK/specs-runc" "$WORK/specs-mose" |
      awk -F'\t' '$2 != $3')
    if [[ -z $diffs ]]; then
      echo "every spec has the same result under runc and mose"
    else
      echo "specs whose result differs (runc -> mose):"
      while IFS=$'\t' read -r spec r m; do
        echo "  $r -> $m: $spec"
        [[ $r == passed ]] && STATUS=1
      done <<<"$diffs"
    fi
    echo "failing under both:"
    join -t$'\t' -1 2 -2 2 -o 0,1.1,2.1 "$WORK/specs-runc" "$WORK/specs-mose" |
      awk -F'\t' '$2 != "passed" && $2 != "skipped" && $3 != "passed" && $3 != "skipped" {print "  " $1}'
  fi
fi
if [[ $MODE == all || $MODE == tty ]]; then
  for h in "${HANDLERS[@]}"; do
    eval "l=\${TTY_LOST_$h:-?} f=\${TTY_FAILED_$h:-?}"
    echo "tty exec ($h): $TTY_COUNT runs, $l lost output, $f failed"
  done
  [[ ${TTY_LOST_mose:-1} == 0 && ${TTY_FAILED_mose:-1} == 0 ]] || STATUS=1
fi
echo "results: results/critest-{runc,mose}.{txt,xml}, results/critest-tty.txt; $(( $(date +%s) - START_TS )) s"
exit "$STATUS"
