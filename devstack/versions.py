"""Every pinned version and fixed port of the local stack, in one place.

Changing a version here changes the cache key (``~/.cache/pushtask/<tool>-<version>/``),
so the next ``devstack build`` or ``up`` rebuilds exactly the tools whose version moved.
"""

from __future__ import annotations

# Go toolchain: the builds run with GOTOOLCHAIN=local, so the Go on PATH must be at
# least this new (k8s.io/kubernetes v1.37 declares `go 1.26.0`).
GO_MIN_VERSION = "1.26"

# Kubernetes server components and kubectl come from the k8s.io/kubernetes module; its
# staging modules (k8s.io/api, k8s.io/client-go, ...) are published as v0.<minor>.<patch>.
KUBERNETES_VERSION = "v1.37.2"
KUBERNETES_STAGING_VERSION = "v0.37.2"

# etcd: the server module that k8s.io/kubernetes v1.37.2 itself requires (go.mod), so the
# apiserver is paired with the etcd release it is tested against.
ETCD_VERSION = "v3.7.0"

HELM_MODULE = "helm.sh/helm/v3"
HELM_VERSION = "v3.22.0"

# The MongoDB-wire servers. mongo-java-server (Maven Central, run with the machine's Java,
# H2 file backend) serves the local stack and the tests: FerretDB v1 updates documents one at
# a time with a scan of the collection each (measured at 20,000 documents: update_one by _id
# 77 ms, update_many of 20 ids 2.3 s on SQLite, 0.8 s on PostgreSQL), too slow for runs of
# 200,000 recipients. FerretDB is still built and the store's tests run on both servers, so
# the core path stays within what both serve. Keep the version in step with
# devstack/mongo_java/pom.xml.
MONGO_JAVA_SERVER_VERSION = "1.47.0"
FERRETDB_VERSION = "v1.24.1"

# --- ports (all on 127.0.0.1) -------------------------------------------------------
# Chosen off the default ports of a real etcd/MongoDB so that a developer's own servers
# do not collide with the stack.
ETCD_CLIENT_PORT = 2479
ETCD_PEER_PORT = 2480
APISERVER_PORT = 6443
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259
MONGO_PORT = 27030
FERRETDB_PORT = 27027
FERRETDB_DEBUG_PORT = 27028

# Service network handed to the apiserver; nothing routes it (there is no kube-proxy),
# but the `kubernetes` Service needs a range to allocate from.
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"

NODE_NAME = "devstack"
