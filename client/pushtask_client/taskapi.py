"""The PushTask API as people's tools use it (`kubectl push` and the web console).

kubectl's ways of naming a cluster (--kubeconfig, --context, KUBECONFIG, in-cluster), one
policy for API errors (each becomes one line a person can act on: a 403 says which verb on
which resource), and actions applied with optimistic concurrency: the patch carries the
resourceVersion it was planned from, and on a conflict the task is read again and the
action planned anew. The kubernetes client is synchronous: async callers use a thread.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

from pushtask import testsend
from pushtask.models import GROUP, KIND, PLURAL, VERSION
from pushtask.naming import worker_deployment_name
from pushtask_client import actions

RESOURCE = f"{PLURAL}.{GROUP}"
CONFLICT_RETRIES = 5
MONGO_URI_ENV = "PUSHTASK_MONGO_URI"  # how the operator hands workers the store
# The chart's operator Deployment: its label, and the setting naming its degrade ConfigMap.
OPERATOR_SELECTOR = "app.kubernetes.io/name=pushtask-operator"
DEGRADE_CONFIGMAP_ENV = "PUSHTASK_DEGRADE_CONFIGMAP"
WATCH_SECONDS = 300  # one watch request's length (the server ends it; we start the next)


class ClusterError(Exception):
    """What the cluster refused, or why it cannot be asked: one line for a person."""

    def __init__(
        self, message: str, status: int = 0, causes: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status behind it (0: none, the cluster unreachable)
        # A 422's `details.causes` as [{field, message}]: the console shows each by its field.
        self.causes = causes or []


def api_causes(body: str | None) -> list[dict[str, str]]:
    """The field-level causes of an API error body (a 422 names each invalid field)."""
    try:
        parsed = json.loads(body or "{}")
    except json.JSONDecodeError:
        return []
    details = parsed.get("details") if isinstance(parsed, dict) else None
    causes = details.get("causes") if isinstance(details, dict) else None
    return [
        {"field": str(c.get("field") or ""), "message": str(c.get("message") or "")}
        for c in causes or []
        if isinstance(c, dict)
    ]


def api_message(status: int, body: str | None, verb: str, what: str, namespace: str) -> str:
    """The one line for an API error: the 403 says which verb on which resource."""
    try:
        parsed = json.loads(body or "{}")
    except json.JSONDecodeError:
        parsed = {}
    detail: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    message = str(detail.get("message") or "").strip()
    if status == 403:
        return f"forbidden: you may not {verb} {what} in namespace {namespace} ({message})"
    if status == 404:
        details = detail.get("details") or {}
        if not details.get("name"):  # the collection itself: no such resource type
            return f"the PushTask CRD ({RESOURCE}) is not installed in this cluster"
        return f"{what} not found in namespace {namespace}"
    if status == 409:
        return f"{what} changed {CONFLICT_RETRIES} times while being updated; try again"
    if status == 422:
        return f"the API server refused it: {message}"
    return f"{verb} {what}: HTTP {status}: {message or 'no message'}"


class Cluster:
    """The few API calls people's tools make about PushTasks."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        from kubernetes import client, config

        cfg = client.Configuration()
        try:
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=cfg
            )
            contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
            chosen = (
                next((c for c in contexts if c["name"] == context), active) if context else active
            )
            self.default_namespace = str(
                (chosen or {}).get("context", {}).get("namespace") or "default"
            )
        except (config.ConfigException, OSError, TypeError) as error:
            if kubeconfig or context:
                raise ClusterError(f"kubeconfig: {error}") from None
            try:
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException:
                raise ClusterError(f"no cluster: {error}") from None
            self.default_namespace = "default"
        self.api = client.ApiClient(cfg)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)

    def call(self, verb: str, what: str, namespace: str, fn: Callable[[], Any]) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn()
        except ApiException as exc:
            message = api_message(exc.status, exc.body, verb, what, namespace)
            raise ClusterError(message, exc.status, api_causes(exc.body)) from None
        except (OSError, HTTPError) as exc:  # urllib3 wraps refused connections in its own
            raise ClusterError(f"cannot reach the API server: {exc}") from None

    def get(self, ns: str, name: str) -> dict[str, Any]:
        what = f'pushtask "{name}"'
        fn = self.custom.get_namespaced_custom_object
        return dict(self.call("get", what, ns, lambda: fn(GROUP, VERSION, ns, PLURAL, name)))

    def tasks(self, ns: str | None) -> list[dict[str, Any]]:
        """PushTasks of a namespace (None: of every namespace), by namespace and name."""
        return self.tasks_and_version(ns)[0]

    def act(self, ns: str, name: str, action: str, workers: int | None = None) -> str:
        """Plan the action on the task as it is and patch; on a conflict read it again.
        Returns what changed, in words; raises actions.Refused or ClusterError."""
        from kubernetes.client.exceptions import ApiException

        for _ in range(CONFLICT_RETRIES):
            task = self.get(ns, name)
            change = actions.plan(action, task, workers)
            if change is None:
                return f"pushtask/{name} unchanged"
            fn = self.custom.patch_namespaced_custom_object
            try:
                fn(GROUP, VERSION, ns, PLURAL, name, change.patch)
            except ApiException as exc:
                if exc.status == 409:
                    continue  # changed since we read it: plan again from what it is now
                message = api_message(exc.status, exc.body, "patch", f'{RESOURCE} "{name}"', ns)
                raise ClusterError(message, exc.status) from None
            return f"pushtask/{name}: {change.what}"
        raise ClusterError(api_message(409, None, "patch", f'pushtask "{name}"', ns), 409)

    def workers_mongo_uri(self, ns: str, name: str) -> tuple[str, str]:
        """The MongoDB URI the task's workers use and where it was read (`secret "x" key
        "uri"`): the Secret key their Deployment (which the operator owns) names."""
        deployment = worker_deployment_name(name)
        fn = self.apps.read_namespaced_deployment
        got = self.call("get", f'deployment "{deployment}"', ns, lambda: fn(deployment, ns))
        ref = next(
            (
                e.value_from.secret_key_ref
                for c in got.spec.template.spec.containers
                for e in c.env or []
                if e.name == MONGO_URI_ENV and e.value_from and e.value_from.secret_key_ref
            ),
            None,
        )
        if ref is None:
            raise ClusterError(f"deployment {deployment} has no {MONGO_URI_ENV} from a Secret")
        read = self.core.read_namespaced_secret
        secret = self.call("get", f'secret "{ref.name}"', ns, lambda: read(ref.name, ns))
        raw = (secret.data or {}).get(ref.key)
        if not raw:
            raise ClusterError(f"secret {ref.name} in {ns} has no key {ref.key!r}")
        return base64.b64decode(raw).decode(), f'secret "{ref.name}" key "{ref.key}"'

    def worker_deployment(self, ns: str, name: str) -> dict[str, Any] | None:
        """The task's worker Deployment in its API JSON form (camelCase), None when there
        is none (the operator makes it with the task's first run)."""
        deployment = worker_deployment_name(name)
        fn = self.apps.read_namespaced_deployment
        return self._read(f'deployment "{deployment}"', ns, lambda: fn(deployment, ns))

    def _read(self, what: str, ns: str, fn: Callable[[], Any]) -> dict[str, Any] | None:
        """An object in its API JSON form (camelCase), None when there is none."""
        try:
            got = self.call("get", what, ns, fn)
        except ClusterError as error:
            if error.status == 404:
                return None
            raise
        return dict(self.api.sanitize_for_serialization(got))

    def ask_test_template(self, ns: str, name: str, nonce: str) -> None:
        """Ask the operator for the task's workers' pod template (testsend.TEMPLATE_REQUEST):
        the annotation alone, as a merge patch (nothing else of the task is touched)."""
        patch = {"metadata": {"annotations": {testsend.TEMPLATE_REQUEST: nonce}}}
        fn = self.custom.patch_namespaced_custom_object
        self.call(
            "patch", f'pushtask "{name}"', ns, lambda: fn(GROUP, VERSION, ns, PLURAL, name, patch)
        )

    def test_template(self, ns: str, name: str) -> dict[str, Any] | None:
        """The operator's answer (a PodTemplate named like the worker Deployment) in its API
        JSON form, None while there is none."""
        template = worker_deployment_name(name)
        fn = self.core.read_namespaced_pod_template
        return self._read(f'podtemplate "{template}"', ns, lambda: fn(template, ns))

    def create_pod(self, ns: str, pod: dict[str, Any]) -> str:
        """Create a pod; returns its name."""
        fn = self.core.create_namespaced_pod
        body: Any = pod  # the client takes a plain dict as the body, whatever its hints say
        got = self.call("create", "pods", ns, lambda: fn(ns, body))
        return str(got.metadata.name)

    def read_pod(self, ns: str, name: str) -> dict[str, Any]:
        fn = self.core.read_namespaced_pod
        got = self.call("get", f'pod "{name}"', ns, lambda: fn(name, ns))
        return dict(self.api.sanitize_for_serialization(got))

    def pod_log(self, ns: str, name: str) -> str:
        """The pod's log as the raw text: not through the client's decoding, which may
        read a log that is one JSON line as JSON and hand back its Python repr."""
        fn = self.core.read_namespaced_pod_log
        got = self.call(
            "get", f'the log of pod "{name}"', ns, lambda: fn(name, ns, _preload_content=False)
        )
        return bytes(got.data).decode("utf-8", "replace")

    def delete_pod(self, ns: str, name: str) -> None:
        """Delete a pod at once (a pod already gone is fine)."""
        fn = self.core.delete_namespaced_pod
        try:
            self.call("delete", f'pod "{name}"', ns, lambda: fn(name, ns, grace_period_seconds=0))
        except ClusterError as error:
            if error.status != 404:
                raise

    def tasks_and_version(self, ns: str | None) -> tuple[list[dict[str, Any]], str]:
        """`tasks(ns)` and the list's resourceVersion (where a watch of them starts)."""
        if ns is None:
            fn = self.custom.list_cluster_custom_object
            got = self.call("list", RESOURCE, "(all)", lambda: fn(GROUP, VERSION, PLURAL))
        else:
            fn2 = self.custom.list_namespaced_custom_object
            got = self.call("list", RESOURCE, ns, lambda: fn2(GROUP, VERSION, ns, PLURAL))
        items = sorted(
            got.get("items") or [],
            key=lambda t: (t["metadata"].get("namespace", ""), t["metadata"]["name"]),
        )
        return items, str((got.get("metadata") or {}).get("resourceVersion") or "")

    def watch_tasks(self, ns: str | None) -> Iterator[tuple[str, Any]]:
        """The PushTasks of `ns` (None: every namespace) as they change, for ever:
        ("SYNC", [every task]) first and after a watch that expired (410 Gone: changes
        were missed, so the whole list is read again), then ("ADDED" | "MODIFIED" |
        "DELETED", task) for each change, as kubectl's watch sees them."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        where = "(all)" if ns is None else ns
        if ns is None:
            fn: Callable[..., Any] = self.custom.list_cluster_custom_object
            args: tuple[str, ...] = (GROUP, VERSION, PLURAL)
        else:
            fn, args = self.custom.list_namespaced_custom_object, (GROUP, VERSION, ns, PLURAL)
        version = ""
        while True:
            if not version:
                items, version = self.tasks_and_version(ns)
                yield "SYNC", items
            stream = watch.Watch()
            # The server ends each watch after WATCH_SECONDS; a dead connection is
            # noticed when nothing at all (not even that end) came for longer.
            options = {
                "resource_version": version,
                "timeout_seconds": WATCH_SECONDS,
                "allow_watch_bookmarks": True,
                "_request_timeout": WATCH_SECONDS + 30,
            }
            try:
                for event in stream.stream(fn, *args, **options):
                    if event and event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        yield event["type"], event["object"]
                version = stream.resource_version or version
            except ApiException as exc:
                if exc.status != 410:
                    message = api_message(exc.status, exc.body, "watch", RESOURCE, where)
                    raise ClusterError(message, exc.status) from None
                version = ""  # too old: list again
            except (OSError, HTTPError) as exc:
                raise ClusterError(f"cannot reach the API server: {exc}") from None

    def operator_env(self, release_ns: str, configmap: str) -> tuple[str, dict[str, str]]:
        """The Deployment name and the literal environment of the operator that watches
        the degrade ConfigMap `release_ns/configmap` (the chart sets its settings so).
        Raises ClusterError when it cannot be read or there is none."""
        fn = self.apps.list_namespaced_deployment
        got = self.call(
            "list", "deployments", release_ns,
            lambda: fn(release_ns, label_selector=OPERATOR_SELECTOR),
        )  # fmt: skip
        wanted = f"{release_ns}/{configmap}"
        for deployment in got.items or []:
            for container in deployment.spec.template.spec.containers:
                env = {e.name: e.value for e in container.env or [] if e.value is not None}
                if env.get(DEGRADE_CONFIGMAP_ENV) == wanted:
                    return str(deployment.metadata.name), env
        raise ClusterError(f"no operator in namespace {release_ns} watches configmap {configmap}")

    def configmap_data(self, ns: str, name: str) -> dict[str, str]:
        fn = self.core.read_namespaced_config_map
        got = self.call("get", f'configmap "{name}"', ns, lambda: fn(name, ns))
        return dict(got.data or {})

    def events(self, ns: str, name: str) -> list[Any]:
        """The task's Events, oldest first (a wrong name is an error, not an empty list)."""
        self.get(ns, name)
        selector = f"involvedObject.name={name},involvedObject.kind={KIND}"
        fn = self.core.list_namespaced_event
        got = self.call("list", "events", ns, lambda: fn(ns, field_selector=selector))
        return sorted(got.items or [], key=event_time)

    def create(
        self, doc: dict[str, Any], ns: str, *, dry_run: bool = False, manager: str = "kubectl-push"
    ) -> dict[str, Any]:
        """Create a PushTask (never replaces one: an existing name is a 409); with `dry_run`
        the API server checks the CRD schema and its CEL rules and stores nothing."""
        name = str((doc.get("metadata") or {}).get("name") or "")
        fn = self.custom.create_namespaced_custom_object
        extra: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        return dict(
            self.call(
                "create", f'{RESOURCE} "{name}"', ns,
                lambda: fn(GROUP, VERSION, ns, PLURAL, doc, field_manager=manager, **extra),
            )
        )  # fmt: skip

    def apply(
        self, doc: dict[str, Any], ns: str, *, dry_run: bool = False, manager: str = "kubectl-push"
    ) -> dict[str, Any]:
        """Server-side apply (create or update alike); with `dry_run` the API server checks
        the CRD schema and its CEL rules and stores nothing. Raises ClusterError with the
        API server's words."""
        name = str((doc.get("metadata") or {}).get("name") or "")
        fn = self.custom.patch_namespaced_custom_object
        extra: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        got = self.call(
            "apply", f'{RESOURCE} "{name}"', ns,
            lambda: fn(
                GROUP, VERSION, ns, PLURAL, name, doc, field_manager=manager, force=True,
                _content_type="application/apply-patch+yaml", **extra,
            ),
        )  # fmt: skip
        # The client does not decode an apply's answer (its content type is not JSON).
        return dict(got) if isinstance(got, dict) else {}


def event_time(event: Any) -> str:
    """An Event's last time as text (sortable), '-' when it has none."""
    t = (
        event.last_timestamp
        or event.event_time
        or event.first_timestamp
        or event.metadata.creation_timestamp
    )
    return t.strftime("%Y-%m-%d %H:%M:%S") if t else "-"
