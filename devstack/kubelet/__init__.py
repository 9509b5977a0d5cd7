"""devstack's local kubelet: runs the containers of pods bound to one Node as local processes.

Run as ``python -m devstack.kubelet --kubeconfig PATH --node-name NAME --state-dir DIR``.
The image of a container is ignored: its ``command``/``args`` run in the project's Python
environment, each pod on its own loopback address, with a kubeconfig holding a token of
the pod's own ServiceAccount so that RBAC applies to the pod as in a real cluster.
"""
