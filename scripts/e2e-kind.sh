#!/usr/bin/env bash
# `make e2e-kind`: the end-to-end suite on a kind cluster (needs Docker, kind, kubectl,
# helm). Not runnable on machines without Docker (like the CI of this repo, which uses
# devstack); kept short on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-pushtask-e2e}
IMAGE=${IMAGE:-pushtask:e2e}
NS=pushtask-system
KUBECONFIG_FILE=$(mktemp)
trap 'rm -f "$KUBECONFIG_FILE"; [ "${KEEP_CLUSTER:-0}" = 1 ] || kind delete cluster --name "$CLUSTER"' EXIT

kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE" --wait 120s
export KUBECONFIG=$KUBECONFIG_FILE

docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

helm install pushtask charts/pushtask -n "$NS" --create-namespace --wait --timeout 5m \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
  --set image.pullPolicy=Never --set mongodb.bundled.enabled=true
helm test pushtask -n "$NS"

# The same URI as the chart's own Secret (the operator's database): see pushtask.mongoUri.
# The suite installs nothing itself when told that the chart is already there; workers
# reach the test's webhook sink through the host's address on the kind network.
PUSHTASK_E2E_KUBECONFIG=$KUBECONFIG_FILE \
PUSHTASK_E2E_RELEASE=pushtask PUSHTASK_E2E_RELEASE_NAMESPACE=$NS \
PUSHTASK_E2E_WORKER_MONGO_URI=mongodb://pushtask-mongodb.$NS.svc:27017/pushtask \
PUSHTASK_E2E_SINK_HOST=${PUSHTASK_E2E_SINK_HOST:-$(docker network inspect kind -f '{{(index .IPAM.Config 0).Gateway}}')} \
  .venv/bin/python -m pytest -m e2e tests/e2e -v
