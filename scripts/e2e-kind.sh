#!/usr/bin/env bash
# `make e2e-kind`: the chart on a real kind cluster and the kind suite (tests/kind) against
# it: the product image in containers with their security settings and limits, pod
# networking, cluster DNS and Services, on a real kubelet.
#
# Works the same with or without a registry (docs/kind.md):
#   KIND_IMAGES=auto     (default) stock images when Docker Hub answers, else offline
#   KIND_IMAGES=stock    kindest/node, mongo:7.0, python:3.11-slim from their registries
#   KIND_IMAGES=offline  every image built here from Debian packages and pinned sources
# Other knobs: KIND_CLUSTER (pushtask-e2e), IMAGE (pushtask:e2e), KEEP_CLUSTER=1 (leave
# the cluster running; a second run reuses it), KIND_NODE_IMAGE (a node image of yours),
# PYTEST_ARGS (e.g. "-k campaign"), KIND_SUITE (tests/kind).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/kind/lib.sh

CLUSTER=${KIND_CLUSTER:-pushtask-e2e}
NS=pushtask-system
MODE=${KIND_IMAGES:-auto}
STATE=$KIND_CACHE/run/$CLUSTER
mkdir -p "$STATE"
KUBECONFIG_FILE=$STATE/kubeconfig
T0=$(now)

# --- a container engine -------------------------------------------------------------------
started_docker=0
if ! timeout 10 docker info >/dev/null 2>&1; then
  bash scripts/kind/docker.sh ensure
  started_docker=1
fi
cleanup() {
  rc=$?
  if [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    "$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    [ "$started_docker" = 1 ] && bash scripts/kind/docker.sh stop
  else
    log "cluster $CLUSTER kept: export KUBECONFIG=$KUBECONFIG_FILE"
  fi
  exit $rc
}
KIND=kind
trap cleanup EXIT
# A signal ends the script through its EXIT trap too (bash runs no EXIT trap otherwise).
trap 'exit 130' INT TERM

# --- tools: kind, kubectl and helm at the pinned versions (built once, cached) -------------
declare -A BIN
while read -r tool path; do BIN[$tool]=$path; done < <(
  PYTHONPATH=$PWD "$PY" scripts/kind/gobuild.py "${HOST_TOOLS[@]}")
KIND=${BIN[kind]}
PATH=$(dirname "${BIN[kubectl]}"):$(dirname "${BIN[helm]}"):$PATH
export PATH

# --- images ----------------------------------------------------------------------------------
if [ "$MODE" = auto ]; then
  # Where the stock node image can be pulled (kind would pull it anyway), use stock images;
  # with no registry the pull fails at once.
  if docker pull -q "kindest/node:$KUBE_VERSION" >/dev/null 2>&1; then MODE=stock; else MODE=offline; fi
fi
log "images: $MODE"
if [ "$MODE" = offline ]; then
  if [ -n "${KIND_NODE_IMAGE:-}" ]; then
    NODE=$KIND_NODE_IMAGE
    MONGO=$(bash scripts/kind/build-mongo.sh)
    KIND_IMAGES=offline bash scripts/kind/build-image.sh
  else
    # Assigned first: a failed build stops here (set -e), where a here-string would hand
    # `read` empty names and kind would try to pull its default node image.
    images=$(bash scripts/kind/build-all.sh)  # the product image too
    read -r NODE MONGO <<<"$images"
  fi
  # Docker here cannot start --privileged containers (docs/kind.md): kind gets the docker
  # wrapper first on its PATH, and the offline node's entrypoint makes /sys writable.
  if ! docker run --rm --privileged --entrypoint true "$NODE" >/dev/null 2>&1; then
    log "docker cannot run --privileged here: kind uses scripts/kind/bin/docker"
    export PATH=$PWD/scripts/kind/bin:$PATH
  fi
else
  NODE=${KIND_NODE_IMAGE:-kindest/node:$KUBE_VERSION}
  MONGO=mongo:7.0
  KIND_IMAGES=stock bash scripts/kind/build-image.sh
fi

# --- the cluster -------------------------------------------------------------------------------
t1=$(now)
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "reusing cluster $CLUSTER"
  "$KIND" get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"
else
  "$KIND" create cluster --name "$CLUSTER" --image "$NODE" --config scripts/kind/cluster.yaml \
    --kubeconfig "$KUBECONFIG_FILE" --wait 180s
fi
export KUBECONFIG=$KUBECONFIG_FILE
kubectl wait --for=condition=Ready node --all --timeout=120s >/dev/null
kubectl -n kube-system rollout status deployment/coredns --timeout=120s >/dev/null
log "cluster ready in $(took "$t1")s"

t1=$(now)
images=("$PRODUCT_IMAGE")
[ "$MODE" = offline ] && images+=("$MONGO")
for img in "${images[@]}"; do "$KIND" load docker-image "$img" --name "$CLUSTER" >/dev/null; done
log "images loaded in $(took "$t1")s"

# --- the chart -----------------------------------------------------------------------------------
t1=$(now)
reused=0
helm status pushtask -n "$NS" >/dev/null 2>&1 && reused=1
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NS" create secret generic pushtask-console-token \
  --from-literal=token=e2e-console-token --dry-run=client -o yaml | kubectl apply -f - >/dev/null
helm upgrade --install pushtask charts/pushtask -n "$NS" --wait --timeout 5m \
  --set image.repository="${PRODUCT_IMAGE%:*}" --set image.tag="${PRODUCT_IMAGE##*:}" \
  --set image.pullPolicy=Never \
  --set mongodb.bundled.enabled=true --set mongodb.bundled.image="$MONGO" \
  --set console.enabled=true --set console.tokenSecret.name=pushtask-console-token \
  --set worker.leaseSeconds=10 --set operator.progressInterval=1 >/dev/null
# A new image under the same tag: make running pods pick it up on a reused cluster.
[ "$reused" = 1 ] && kubectl -n "$NS" rollout restart deployment >/dev/null
kubectl -n "$NS" rollout status deployment --timeout=180s >/dev/null
helm test pushtask -n "$NS" >/dev/null
log "chart installed and tested in $(took "$t1")s"

# --- the suite ------------------------------------------------------------------------------------
# The suite uses this release (PUSHTASK_E2E_RELEASE) and its bundled MongoDB, reached by
# the workers through the Service's DNS name; the webhook sink listens on the host's
# address on the kind network, which pods reach through the node.
t1=$(now)
rc=0
# shellcheck disable=SC2086  # PYTEST_ARGS is split into words on purpose
PUSHTASK_E2E_KUBECONFIG=$KUBECONFIG_FILE \
PUSHTASK_E2E_RELEASE=pushtask PUSHTASK_E2E_RELEASE_NAMESPACE=$NS \
PUSHTASK_E2E_WORKER_MONGO_URI=mongodb://pushtask-mongodb.$NS.svc:27017/pushtask \
PUSHTASK_E2E_SINK_HOST=${PUSHTASK_E2E_SINK_HOST:-$(docker network inspect kind -f '{{(index .IPAM.Config 0).Gateway}}')} \
PUSHTASK_KIND_CLUSTER=$CLUSTER PUSHTASK_KIND_NODE=$CLUSTER-control-plane \
  "$PY" -m pytest "${KIND_SUITE:-tests/kind}" -p no:cacheprovider -v ${PYTEST_ARGS:-} || rc=$?
log "suite finished in $(took "$t1")s (rc=$rc); all of e2e-kind $(took "$T0")s"
kubectl get nodes,pods -A -o wide | tee "$STATE/last-run.txt"
# A container that restarted during the run: what it said before it ended goes beside.
kubectl get pods -A -o jsonpath='{range .items[*]}{.metadata.namespace} {.metadata.name} {range .status.containerStatuses[*]}{.name}={.restartCount} {end}{"\n"}{end}' \
  | while read -r ns pod containers; do
      for c in $containers; do
        [ "${c#*=}" = 0 ] && continue
        echo "--- $ns/$pod ${c%=*}: restarted ${c#*=}x; its previous container's last lines:"
        kubectl -n "$ns" logs "$pod" -c "${c%=*}" --previous --tail=40 2>&1 || true
      done
    done | tee -a "$STATE/last-run.txt" || true
exit $rc
