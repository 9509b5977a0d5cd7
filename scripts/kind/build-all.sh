#!/usr/bin/env bash
# Every offline image of the kind path: the node, the MongoDB-wire server and the product
# (`make kind-images`; scripts/e2e-kind.sh runs it when no registry answers). Each piece is
# cached (build-node.sh, build-mongo.sh, build-image.sh); on a cold machine the slow parts
# overlap: the four Debian root filesystems (downloads and dpkg, little CPU) are built in
# the background while the Go binaries compile. Prints the node and MongoDB image names.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
HERE=$ROOT/scripts/kind
T0=$(now)
bash "$HERE/docker.sh" ensure

all_rootfs & rootfs_pid=$!
(cd "$ROOT" && PYTHONPATH=$ROOT "$PY" "$HERE/gobuild.py" \
  $(printf '%s\n' "${NODE_TOOLS[@]}" "${MONGO_TOOLS[@]}" "${HOST_TOOLS[@]}" | sort -u) >/dev/null) || {
  kill "$rootfs_pid" 2>/dev/null; exit 1; }
log "binaries ready in $(took "$T0")s"
wait "$rootfs_pid" || { log "a root filesystem failed (above)"; exit 1; }
log "root filesystems ready in $(took "$T0")s"

node=$(bash "$HERE/build-node.sh")
mongo=$(bash "$HERE/build-mongo.sh")
KIND_IMAGES=offline bash "$HERE/build-image.sh" >&2
log "all offline images ready in $(took "$T0")s"
echo "$node $mongo"
