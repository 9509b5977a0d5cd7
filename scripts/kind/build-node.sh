#!/usr/bin/env bash
# The kind node image, built offline: what kindest/node holds, made from Debian packages
# and pinned sources (docs/kind.md). Prints the image name. Cached: the Go binaries under
# ~/.cache/pushtask/<tool>-<version>/, the root filesystem and the finished image (a
# `docker save` tarball) under ~/.cache/pushtask/kind/, keyed by every pin and by the
# files that shape them; a second run with nothing changed takes a second or two.
#
#   1. binaries: kubelet, kubeadm, kube-proxy, CoreDNS, kind and pause (scripts/kind/
#      gobuild.py); kube-apiserver, -controller-manager, -scheduler, kubectl, etcd and
#      helm are devstack's own (`python -m devstack build`), the same pins;
#   2. the images kubeadm pulls (registry.k8s.io/...: control plane, kube-proxy, etcd,
#      CoreDNS, pause), each a tarball of its binary given to `docker import`;
#   3. the node: a Debian root filesystem with systemd, containerd, runc and the CNI
#      plugins, plus kind's own images/base/files from the kind module, configured the way
#      kind's base Dockerfile does it (`docker build --network none`);
#   4. the images of 2 preloaded into the node's containerd (`ctr import`), committed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
HERE=$ROOT/scripts/kind
T0=$(now)

# --- 1. binaries ----------------------------------------------------------------------------
declare -A BIN
while read -r tool path; do BIN[$tool]=$path; done < <(
  cd "$ROOT" && PYTHONPATH=$ROOT "$PY" "$HERE/gobuild.py" "${NODE_TOOLS[@]}")
KIND_SRC=$(cd "$ROOT" && GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" \
  | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')

# Everything that shapes the node: a change to any of it makes a new image.
NODE_KEY=$(key "$KUBE_VERSION" "$ETCD_TAG" "$COREDNS_VERSION" "$PAUSE_TAG" "$KIND_VERSION" \
  "$DEBIAN_SUITE" "${DEBIAN_MIRRORS[@]}" "$0" "$HERE/gobuild.py" "$HERE/node/pushtask-node-entrypoint" \
  "$HERE/node/10-bridge.conflist" "$HERE/node/default-cni.yaml" "$HERE/node/iptables-wrapper")
NODE_TAR=$KIND_CACHE/images/node-$KUBE_VERSION-$NODE_KEY.tar
if image_cached "$NODE_IMAGE" "$NODE_TAR" \
   && [ "$(docker image inspect -f '{{index .Config.Labels "pushtask.node-key"}}' "$NODE_IMAGE")" = "$NODE_KEY" ]; then
  log "node image $NODE_IMAGE is cached (key $NODE_KEY)"
  echo "$NODE_IMAGE"
  exit 0
fi

WORK=$(mktemp -d)
cleanup() { docker rm -f "pushtask-node-preload-$$" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

# --- 2. the images kubeadm expects ------------------------------------------------------------
REG=registry.k8s.io
expected=$("${BIN[kubeadm]}" config images list --kubernetes-version "$KUBE_VERSION" 2>/dev/null)
for want in "$REG/kube-apiserver:$KUBE_VERSION" "$REG/coredns/coredns:$COREDNS_VERSION" \
            "$REG/pause:$PAUSE_TAG" "$REG/etcd:$ETCD_TAG"; do
  grep -qx "$want" <<<"$expected" || { log "kubeadm $KUBE_VERSION asks for: $expected (pins in lib.sh differ: $want)"; exit 1; }
done

t1=$(now)
# A static binary needs no libraries: the image is the binary, /etc/passwd for `nobody`,
# the CA bundle and an empty /tmp (what distroless/static, upstream's base, holds).
static_image() {  # IMAGE BINARY [ENTRYPOINT_JSON]
  local dir=$WORK/img-$RANDOM
  mkdir -p "$dir/usr/local/bin" "$dir/etc/ssl/certs" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/etc/group"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
  cp "$2" "$dir/usr/local/bin/"
  local changes=(--change 'ENV PATH=/usr/local/bin:/usr/bin:/bin')
  [ -n "${3:-}" ] && changes+=(--change "ENTRYPOINT $3")
  tar -C "$dir" -cf - . | docker import "${changes[@]}" - "$1" >/dev/null
}
static_image "$REG/kube-apiserver:$KUBE_VERSION" "${BIN[kube-apiserver]}"
static_image "$REG/kube-controller-manager:$KUBE_VERSION" "${BIN[kube-controller-manager]}"
static_image "$REG/kube-scheduler:$KUBE_VERSION" "${BIN[kube-scheduler]}"
static_image "$REG/etcd:$ETCD_TAG" "${BIN[etcd]}"
static_image "$REG/coredns/coredns:$COREDNS_VERSION" "${BIN[coredns]}" '["/usr/local/bin/coredns"]'
static_image "$REG/pause:$PAUSE_TAG" "${BIN[pause]}" '["/usr/local/bin/pause"]'
# kube-proxy programs iptables: its image is a Debian root filesystem with iptables and
# conntrack plus the binary, and a wrapper that picks the node's iptables flavour.
proxy_rootfs=$(rootfs kube-proxy "$PROXY_PACKAGES")
proxy_base=pushtask.local/kube-proxy-rootfs:$(basename "$proxy_rootfs" .tar)
docker image inspect "$proxy_base" >/dev/null 2>&1 || docker import "$proxy_rootfs" "$proxy_base" >/dev/null
mkdir -p "$WORK/proxy"
cp "${BIN[kube-proxy]}" "$HERE/node/iptables-wrapper" "$WORK/proxy/"
cat >"$WORK/proxy/Dockerfile" <<DOCKERFILE
FROM $proxy_base
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY kube-proxy /usr/local/bin/
COPY iptables-wrapper /usr/sbin/
RUN for t in iptables ip6tables; do for s in "" -save -restore; do \
      ln -sf /usr/sbin/iptables-wrapper /etc/alternatives/\$t\$s; done; done
DOCKERFILE
docker build -q --network none -t "$REG/kube-proxy:$KUBE_VERSION" "$WORK/proxy" >/dev/null
PRELOAD=(
  "$REG/kube-apiserver:$KUBE_VERSION" "$REG/kube-controller-manager:$KUBE_VERSION"
  "$REG/kube-scheduler:$KUBE_VERSION" "$REG/kube-proxy:$KUBE_VERSION"
  "$REG/etcd:$ETCD_TAG" "$REG/coredns/coredns:$COREDNS_VERSION" "$REG/pause:$PAUSE_TAG"
)
docker save -o "$WORK/ctx-images.tar" "${PRELOAD[@]}"
log "component images made in $(took "$t1")s"

# --- 3. the node root filesystem and kind's files ---------------------------------------------
node_rootfs=$(rootfs node "$NODE_PACKAGES")
t1=$(now)
base=pushtask.local/kind-node-rootfs:$(basename "$node_rootfs" .tar)
docker image inspect "$base" >/dev/null 2>&1 || docker import "$node_rootfs" "$base" >/dev/null

CTX=$WORK/ctx
mkdir -p "$CTX"
cp -r "$KIND_SRC/images/base/files" "$CTX/files"
chmod -R u+w "$CTX/files"
cp "${BIN[kubelet]}" "${BIN[kubeadm]}" "${BIN[kubectl]}" "$CTX/"
cp "$HERE/node/pushtask-node-entrypoint" "$HERE/node/10-bridge.conflist" "$HERE/node/default-cni.yaml" "$CTX/"
cat >"$CTX/Dockerfile" <<DOCKERFILE
FROM $base
# kind's base image (images/base/Dockerfile of sigs.k8s.io/kind $KIND_VERSION), step by step.
COPY files/usr/local/bin/ /usr/local/bin/
COPY files/kind/ /kind/
COPY files/etc/ /etc/
RUN chmod 755 /usr/local/bin/* /kind/bin/* \\
 && find /lib/systemd/system/sysinit.target.wants/ -name "systemd-tmpfiles-setup.service" -delete \\
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \\
          /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \\
          /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \\
 && echo "ReadKMsg=no" >> /etc/systemd/journald.conf \\
 && ln -sf /usr/lib/systemd/systemd /sbin/init \\
 && rm -f /etc/systemd/system/containerd-fuse-overlayfs.service \\
 && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \\
 && systemctl mask systemd-binfmt.service \\
 && mkdir -p /etc/kubernetes/manifests /kind/manifests /opt/cni/bin /etc/cni/net.d
# Debian's containerd (1.6) where kind's unit and scripts expect its own build; Debian
# puts the CNI plugins in /usr/lib/cni, kind (and the kubelet's docs) in /opt/cni/bin.
RUN ln -s /usr/bin/containerd /usr/local/bin/containerd \\
 && ln -s /usr/bin/ctr /usr/local/bin/ctr \\
 && for p in /usr/lib/cni/*; do ln -s "\$p" /opt/cni/bin/; done \\
 && ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \\
      | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json
# containerd 1.6 with kind's config: no fuse-overlayfs proxy plugin (not installed); the
# sandbox image kubeadm $KUBE_VERSION expects; restrict_oom_score_adj (else runc fails with
# "can't get final child's PID from pipe: EOF" in a node without CAP_SYS_RESOURCE).
RUN sed -i -e '/^\[proxy_plugins\]/,/^  address = /d' \\
      -e 's|sandbox_image = .*|sandbox_image = "$REG/pause:$PAUSE_TAG"|' \\
      -e 's|restrict_oom_score_adj = false|restrict_oom_score_adj = true|' \\
      /etc/containerd/config.toml \\
 && ! grep -q fuse-overlayfs /etc/containerd/config.toml
COPY kubelet kubeadm kubectl /usr/bin/
COPY pushtask-node-entrypoint /usr/local/bin/
COPY 10-bridge.conflist /etc/cni/net.d/
COPY default-cni.yaml /kind/manifests/
RUN echo "$KUBE_VERSION" > /kind/version && kubelet --version && kubeadm version -o short
ENV container=docker
STOPSIGNAL SIGRTMIN+3
LABEL pushtask.node-key=$NODE_KEY
ENTRYPOINT ["/usr/local/bin/pushtask-node-entrypoint", "/sbin/init"]
DOCKERFILE
unpreloaded=pushtask.local/kind-node-unloaded:$NODE_KEY
docker build -q --network none -t "$unpreloaded" "$CTX" >/dev/null
log "node filesystem configured in $(took "$t1")s"

# --- 4. preload the images into the node's containerd -----------------------------------------
# Only containerd runs (not systemd): the images are written into its content store and
# image list (no unpacking, no snapshots), then the container is committed as the node.
t1=$(now)
name=pushtask-node-preload-$$
docker run -d --name "$name" --entrypoint /usr/bin/containerd -v "$WORK/ctx-images.tar:/images.tar:ro" \
  "$unpreloaded" >/dev/null
for _ in $(seq 60); do docker exec "$name" ctr version >/dev/null 2>&1 && break; sleep 0.5; done
docker exec "$name" ctr -n k8s.io images import --no-unpack --all-platforms --digests /images.tar >/dev/null
docker exec "$name" ctr -n k8s.io images ls -q | sort >"$WORK/loaded"
for img in "${PRELOAD[@]}"; do grep -qx "$img" "$WORK/loaded" || { log "preload missed $img"; cat "$WORK/loaded" >&2; exit 1; }; done
docker stop -t 5 "$name" >/dev/null
docker commit \
  --change 'ENTRYPOINT ["/usr/local/bin/pushtask-node-entrypoint", "/sbin/init"]' \
  --change 'CMD []' "$name" "$NODE_IMAGE" >/dev/null
docker rm "$name" >/dev/null
docker rmi "$unpreloaded" >/dev/null
log "images preloaded in $(took "$t1")s"
save_image "$NODE_IMAGE" "$NODE_TAR"
log "node image $NODE_IMAGE built in $(took "$T0")s (cached as $NODE_TAR)"
echo "$NODE_IMAGE"
