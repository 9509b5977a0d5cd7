"""The names of what the operator makes for a task, which people's tools look up too.

One function per name, used by both sides: a tool that rebuilt a name itself would miss
the shortening of long names and look for an object that does not exist.
"""

from __future__ import annotations

import hashlib

# Pods get "<deployment>-<replicaset hash>-<suffix>": the whole must stay a valid name.
_DEPLOYMENT_NAME_MAX = 200


def worker_deployment_name(task_name: str) -> str:
    """The worker Deployment of task `task_name` (its namespace is the task's)."""
    name = f"{task_name}-worker"
    if len(name) > _DEPLOYMENT_NAME_MAX:
        digest = hashlib.sha256(task_name.encode()).hexdigest()[:10]
        name = f"{task_name[: _DEPLOYMENT_NAME_MAX - 11]}-{digest}"
    return name
