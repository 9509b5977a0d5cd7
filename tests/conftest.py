"""Shared fixtures: the real servers of the local stack (see devstack/testing.py)."""

from devstack.testing import (  # noqa: F401  (re-exported as pytest fixtures)
    devstack_session,
    ferretdb_uri,
    helm,
    k8s_api,
    kubeconfig,
    kubectl,
    mongo_uri,
    namespace,
)
