# Shared by the scripts in scripts/kind/ (sourced, not run). Pinned versions, the cache
# layout and the "build once per key" helper.
# shellcheck shell=bash disable=SC2034  # the pins are used by the scripts that source this

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${PUSHTASK_CACHE_DIR:-$HOME/.cache/pushtask}
KIND_CACHE=$CACHE/kind
PY=${PY:-$ROOT/.venv/bin/python}

# --- pinned versions --------------------------------------------------------------------
# Kubernetes comes from devstack/versions.py (one pin for both clusters).
KUBE_VERSION=$("$PY" -c 'from devstack import versions; print(versions.KUBERNETES_VERSION)')
ETCD_VERSION=$("$PY" -c 'from devstack import versions; print(versions.ETCD_VERSION)')
MONGO_JAVA_SERVER_VERSION=$("$PY" -c 'from devstack import versions; print(versions.MONGO_JAVA_SERVER_VERSION)')
# kind: the newest release on the Go module proxy. Its node images are Kubernetes v1.37.
KIND_VERSION=v0.33.0
# What kubeadm v1.37 asks for (`kubeadm config images list`): the tags are kubeadm's own.
COREDNS_VERSION=v1.14.6
PAUSE_TAG=3.10.2
ETCD_TAG=${ETCD_VERSION#v}-0
# The Debian release of every root filesystem (node, product base, JRE, kube-proxy).
# Packages come from the current point release of bookworm; the image records the list.
DEBIAN_SUITE=bookworm
DEBIAN_MIRRORS=(
  "deb http://deb.debian.org/debian $DEBIAN_SUITE main"
  "deb http://deb.debian.org/debian $DEBIAN_SUITE-updates main"
  "deb http://deb.debian.org/debian-security $DEBIAN_SUITE-security main"
)

# What each root filesystem holds. The node: kind's base image package list
# (images/base/Dockerfile) minus the storage clients (nfs, iSCSI) and fuse-overlayfs
# (rootless only), plus Debian's containerd, runc and CNI plugins, which kind builds from
# source instead. kube-proxy programs iptables. The product's base is Debian's Python
# (python3-venv: the Dockerfile makes a virtualenv). The MongoDB-wire server needs a JRE.
NODE_PACKAGES=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,curl,jq,procps,containerd,runc,containernetworking-plugins,socat
PROXY_PACKAGES=iptables,conntrack,ipset,kmod
PYTHON_PACKAGES=python3,python3-venv,ca-certificates,tzdata
JRE_PACKAGES=openjdk-17-jre-headless
# The pinned Go tools (scripts/kind/gobuild.py) each image needs, and the host's own: one
# list each, which build-all.sh compiles together while the root filesystems are built.
NODE_TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd
  kubelet kubeadm kube-proxy coredns pause kind)
MONGO_TOOLS=(mongo-java-server)
HOST_TOOLS=(kind kubectl helm)

# Image names. The node image carries the Kubernetes version like kindest/node does.
NODE_IMAGE=pushtask.local/kind-node:$KUBE_VERSION
PRODUCT_IMAGE=${IMAGE:-pushtask:e2e}
MONGO_IMAGE=pushtask.local/mongo-java-server:$MONGO_JAVA_SERVER_VERSION

log() { echo "[kind] $*" >&2; }

# Seconds since the epoch, with fractions: the scripts print how long each step took.
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# key WORDS...: a short hash of the words and of the named files' contents. A cached
# artefact is named by its key, so a changed pin or builder rebuilds it and nothing else.
key() {
  local parts=()
  for w in "$@"; do
    if [ -f "$w" ]; then parts+=("$(sha256sum "$w" | cut -c1-16)"); else parts+=("$w"); fi
  done
  printf '%s\n' "${parts[@]}" | sha256sum | cut -c1-12
}

# image_cached IMAGE TARBALL: the image is in Docker's store, or is loaded from the cached
# tarball (Docker's store may have been wiped while ~/.cache stayed).
image_cached() {
  docker image inspect "$1" >/dev/null 2>&1 && return 0
  [ -f "$2" ] || return 1
  log "loading $1 from $2"
  docker load -i "$2" >/dev/null
}

# save_image IMAGE TARBALL: keep a copy of a built image in the cache (NAME-KEY.tar), and
# drop the copies of older keys of the same NAME: only the current build is worth a disk.
save_image() {
  mkdir -p "$(dirname "$2")"
  docker save "$1" -o "$2.partial" && mv "$2.partial" "$2"
  local old
  for old in "${2%-*}"-*.tar; do
    [ "$old" = "$2" ] || [ ! -f "$old" ] || [[ "${old#"${2%-*}"-}" == *-* ]] || rm -f "$old"
  done
}

need_mmdebstrap() {
  command -v mmdebstrap >/dev/null && return 0
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq mmdebstrap >&2
}

# rootfs NAME PACKAGES: a Debian root filesystem tarball, built once per package list.
# mmdebstrap needs no chroot tricks and writes the tarball directly (about a minute).
rootfs() {
  local name=$1 packages=$2 variant=${3:-minbase}
  local k out
  k=$(key "$DEBIAN_SUITE" "$variant" "$packages" "${DEBIAN_MIRRORS[@]}")
  out=$KIND_CACHE/rootfs/$name-$DEBIAN_SUITE-$k.tar
  if [ ! -f "$out" ]; then
    need_mmdebstrap
    mkdir -p "$(dirname "$out")"
    local t0; t0=$(now)
    log "building the $name root filesystem ($DEBIAN_SUITE: $packages)"
    # Docs, man pages and locales are dropped: they only make the images bigger. The man
    # folders stay (empty): update-alternatives (the JRE's postinst) links into them.
    nice -n 10 mmdebstrap --quiet --format=tar --variant="$variant" --include="$packages" \
      --setup-hook='mkdir -p "$1"/usr/share/man/man1 "$1"/usr/share/man/man5 "$1"/usr/share/man/man8' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      "$DEBIAN_SUITE" "$out.partial" "${DEBIAN_MIRRORS[@]}" >&2
    mv "$out.partial" "$out"
    log "built the $name root filesystem in $(took "$t0")s"
  fi
  echo "$out"
}

# all_rootfs: the four root filesystems, built side by side. Each is mostly downloads and
# dpkg unpacking, so on a cold machine they run while the Go builds take the CPU
# (scripts/kind/build-all.sh); a cached one returns at once.
all_rootfs() {
  need_mmdebstrap
  local pids=() rc=0 pid
  rootfs node "$NODE_PACKAGES" >/dev/null & pids+=($!)
  rootfs kube-proxy "$PROXY_PACKAGES" >/dev/null & pids+=($!)
  rootfs python "$PYTHON_PACKAGES" >/dev/null & pids+=($!)
  rootfs jre "$JRE_PACKAGES" >/dev/null & pids+=($!)
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  return $rc
}
