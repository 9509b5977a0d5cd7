"""The operator's few Kubernetes calls, off the event loop, and the one policy for their errors.

The `kubernetes` client is synchronous; kopf runs on asyncio. Every call here runs in a
worker thread (`asyncio.to_thread`) so a slow API server never stalls the other tasks'
handlers and timers. Credentials are reloaded when the kubeconfig file changes: a pod's
token is short-lived and rotated on disk (in-cluster and on devstack alike).

Error policy (`api_error_policy`), applied to every call so no handler decides it again:
- 409, 429, 5xx, timeouts and connection errors pass: `kopf.TemporaryError` with a delay
  (the server's Retry-After when it gives one), so kopf retries the handler or the timer
  after it, without a traceback.
- 422 on the worker Deployment (the API server refuses what the operator built, e.g.
  resource requests above their limits): `DeploymentRejected`; the task shows a Degraded
  condition and one Warning Event, and the same body is not sent again until it changes.
- anything else (403 from missing RBAC, 400, ...): `KubeApiError`; the task shows a
  condition and one Warning Event with the API server's own message.
A 404 on a read is an answer, not an error: the object does not exist (None).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import kopf
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from pushtask.models import GROUP, PLURAL, VERSION
from pushtask.retryafter import parse_retry_after
from pushtask_operator.reconcile import ApiProblem

MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER = "pushtask-operator"
_TOKEN_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
T = TypeVar("T")

# (connect, read) seconds: without a bound a hung API server holds a thread, and the task's
# lock, forever; with one it is a timeout like any other and is retried.
REQUEST_TIMEOUT = (10.0, 30.0)
# Delays when the server gives none. A conflict is over once the object is read again; a
# throttled or failing server needs longer; a restarting one is usually back in seconds.
CONFLICT_DELAY = 1.0
THROTTLED_DELAY = 5.0
SERVER_ERROR_DELAY = 10.0
UNREACHABLE_DELAY = 5.0
# A Retry-After is honoured within these bounds: at least a second (0 would be a busy loop),
# at most five minutes (a task's status must not freeze for hours on one header).
MIN_DELAY = 1.0
MAX_DELAY = 300.0


class KubeApiError(Exception):
    """An answer of the API server that trying again unchanged will not change."""

    def __init__(self, problem: ApiProblem, status: int) -> None:
        super().__init__(problem.message)
        self.problem = problem
        self.status = status


class DeploymentRejected(KubeApiError):
    """422 on the worker Deployment: the body the operator built is invalid as it is."""


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    for key, value in dict(headers).items():
        if str(key).lower() == name.lower():
            return str(value)
    return None


def _status_body(exc: ApiException) -> dict[str, Any]:
    """The metav1.Status the API server sends with an error ({} when there is none)."""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def retry_after(exc: ApiException, now: float | None = None) -> float | None:
    """Seconds the server asked to wait: Retry-After (seconds or a date), else the Status'
    details.retryAfterSeconds; None when it said nothing usable."""
    header = parse_retry_after(_header(exc.headers, "Retry-After"), now)
    if header is not None:
        return header
    seconds = (_status_body(exc).get("details") or {}).get("retryAfterSeconds")
    return float(seconds) if isinstance(seconds, int | float) and seconds >= 0 else None


def _camel(text: str) -> str:
    """A condition reason from an HTTP reason phrase ("Too Many Requests" → TooManyRequests)."""
    return "".join(w[:1].upper() + w[1:] for w in text.replace("-", " ").split() if w.isalnum())


def describe(exc: ApiException) -> tuple[str, str]:
    """(reason, message) of an API error, in the API server's words where it gave them."""
    status = _status_body(exc)
    reason = str(status.get("reason") or "") or _camel(str(exc.reason or "")) or "Unknown"
    message = str(status.get("message") or exc.reason or "no message").strip()
    return reason, f"HTTP {exc.status} {reason}: {message}"


def api_error_policy(exc: BaseException, what: str, *, workload: bool = False) -> Exception | None:
    """What a failed API call becomes (None: not an API error; the caller re-raises it).

    `what` names the call for people ("apply Deployment shop/sale-worker"); `workload`
    marks the worker Deployment, whose 422 degrades the task instead of failing the call.
    """
    if isinstance(exc, ApiException):
        code = int(exc.status or 0)
        reason, detail = describe(exc)
        if code == 0:  # the client's own "no HTTP answer" (TLS failure, bad request body)
            return _retry(f"{what}: {exc.reason or 'no answer'}", UNREACHABLE_DELAY)
        if code in (409, 429) or code >= 500:
            default = {409: CONFLICT_DELAY, 429: THROTTLED_DELAY}.get(code, SERVER_ERROR_DELAY)
            asked = retry_after(exc)
            return _retry(f"{what}: {detail}", default if asked is None else asked)
        if workload and code == 422:
            problem = ApiProblem("DeploymentRejected", f"{what}: {detail}", degraded=True)
            return DeploymentRejected(problem, code)
        return KubeApiError(ApiProblem(f"Api{reason}", f"{what}: {detail}"), code)
    # urllib3: refused, reset, read/connect timeouts (after its own few retries); OSError:
    # the same seen below urllib3 (DNS, TLS handshake, a socket closed mid-read).
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        # MaxRetryError's own text repeats the URL and the pool; its reason says what failed.
        cause = (
            getattr(exc, "reason", None)
            if isinstance(exc, urllib3.exceptions.MaxRetryError)
            else None
        )
        why = cause if isinstance(cause, BaseException) else exc
        return _retry(
            f"{what}: API server unreachable: {type(why).__name__}: {why}", UNREACHABLE_DELAY
        )
    return None


def _retry(message: str, delay: float) -> kopf.TemporaryError:
    delay = min(MAX_DELAY, max(MIN_DELAY, delay))
    return kopf.TemporaryError(f"{message[:900]} (retrying in {delay:g}s)", delay=delay)


class Kube:
    """A lazily (re)configured API client and the calls the operator makes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._api: client.ApiClient | None = None
        self._stamp: tuple[str, float] | None = None

    def _source_stamp(self) -> tuple[str, float]:
        path = os.environ.get("KUBECONFIG") or ""
        candidate = Path(path.split(os.pathsep)[0]) if path else _TOKEN_FILE
        if not path and not _TOKEN_FILE.exists():
            candidate = Path.home() / ".kube" / "config"
        try:
            return str(candidate), candidate.stat().st_mtime
        except OSError:
            return str(candidate), 0.0

    def api(self) -> client.ApiClient:
        with self._lock:
            stamp = self._source_stamp()
            if self._api is None or stamp != self._stamp:
                cfg = client.Configuration()
                if os.environ.get("KUBECONFIG") or not _TOKEN_FILE.exists():
                    config.load_kube_config(client_configuration=cfg)
                else:
                    config.load_incluster_config(client_configuration=cfg)
                self._api = client.ApiClient(cfg)
                self._stamp = stamp
            return self._api

    # -- sync calls (run in threads) ------------------------------------------------------

    def _get(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _secret_keys(self, namespace: str, name: str) -> set[str] | None:
        obj = self._get(client.CoreV1Api(self.api()).read_namespaced_secret, name, namespace)
        if obj is None:
            return None
        return set((obj.data or {}).keys()) | set((obj.string_data or {}).keys())

    def _secret_value(self, namespace: str, name: str, key: str) -> str | None:
        obj = self._get(client.CoreV1Api(self.api()).read_namespaced_secret, name, namespace)
        if obj is None:
            return None
        if key in (obj.data or {}):
            return base64.b64decode(obj.data[key]).decode("utf-8")
        value = (obj.string_data or {}).get(key)
        return None if value is None else str(value)

    def _configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        obj = self._get(client.CoreV1Api(self.api()).read_namespaced_config_map, name, namespace)
        if obj is None:
            return None
        data = dict(obj.data or {})
        for key, value in (obj.binary_data or {}).items():
            data.setdefault(key, base64.b64decode(value).decode("utf-8", "replace"))
        return data

    def _service_account_exists(self, namespace: str, name: str) -> bool:
        api = client.CoreV1Api(self.api())
        return self._get(api.read_namespaced_service_account, name, namespace) is not None

    def _read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        api = client.AppsV1Api(self.api())
        obj = self._get(api.read_namespaced_deployment, name, namespace)
        if obj is None:
            return None
        result: dict[str, Any] = self.api().sanitize_for_serialization(obj)
        return result

    @staticmethod
    def _server_side_apply(patch: Callable[..., Any], body: Mapping[str, Any]) -> None:
        """Creates the object or updates the fields the operator owns. force=True: the
        operator is its controller; a hand edit (a Deployment's replicas or template) is
        put back (scale the PushTask instead)."""
        meta = body["metadata"]
        patch(
            meta["name"],
            meta["namespace"],
            dict(body),
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY_PATCH,
            _request_timeout=REQUEST_TIMEOUT,
        )

    def _apply_deployment(self, body: Mapping[str, Any]) -> None:
        self._server_side_apply(client.AppsV1Api(self.api()).patch_namespaced_deployment, body)

    def _apply_pod_template(self, body: Mapping[str, Any]) -> None:
        """A test send's PodTemplate (the operator's answer to `kubectl push test`)."""
        self._server_side_apply(client.CoreV1Api(self.api()).patch_namespaced_pod_template, body)

    def _patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        api = client.CustomObjectsApi(self.api())
        api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": dict(status)},
            _content_type=MERGE_PATCH,
            _request_timeout=REQUEST_TIMEOUT,
        )

    def _post_event(
        self, involved: Mapping[str, Any], kind: str, type: str, reason: str, message: str
    ) -> None:
        """A core v1 Event on an object outside kopf's handlers: the degrade ConfigMap, or a
        PushTask from the notification sender (`involved` carries its apiVersion)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: Any = {  # a plain dict: the client serialises it as it is
            "metadata": {"generateName": f"{involved['name']}."},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion") or "v1",
                "kind": kind,
                "name": involved["name"],
                "namespace": involved["namespace"],
                "uid": involved.get("uid"),
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        client.CoreV1Api(self.api()).create_namespaced_event(
            involved["namespace"], body, _request_timeout=REQUEST_TIMEOUT
        )

    # -- async wrappers: in a thread, errors through the policy -------------------------

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, workload: bool = False) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as exc:
            mapped = api_error_policy(exc, what, workload=workload)
            if mapped is None:
                raise
            raise mapped from exc

    async def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        what = f"read Secret {namespace}/{name}"
        return await self._call(what, self._secret_keys, namespace, name)

    async def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """A Secret's value at `key` (None: no such Secret or key); never logged."""
        what = f"read Secret {namespace}/{name}"
        return await self._call(what, self._secret_value, namespace, name, key)

    async def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        what = f"read ConfigMap {namespace}/{name}"
        return await self._call(what, self._configmap_data, namespace, name)

    async def service_account_exists(self, namespace: str, name: str) -> bool:
        what = f"read ServiceAccount {namespace}/{name}"
        return await self._call(what, self._service_account_exists, namespace, name)

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        what = f"read Deployment {namespace}/{name}"
        return await self._call(what, self._read_deployment, namespace, name)

    async def apply_deployment(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        what = f"apply Deployment {meta['namespace']}/{meta['name']}"
        await self._call(what, self._apply_deployment, body, workload=True)

    async def apply_pod_template(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        what = f"apply PodTemplate {meta['namespace']}/{meta['name']}"
        await self._call(what, self._apply_pod_template, body)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        what = f"patch status of PushTask {namespace}/{name}"
        await self._call(what, self._patch_status, namespace, name, status)

    async def post_event(
        self, involved: Mapping[str, Any], kind: str, type: str, reason: str, message: str
    ) -> None:
        what = f"post Event on {kind} {involved['namespace']}/{involved['name']}"
        await self._call(what, self._post_event, involved, kind, type, reason, message)

    probe_timeout: float = 10.0

    async def probe_url(self, url: str) -> str | None:
        """None when `url` answers 2xx/3xx to a GET (only the headers are read)."""
        limit = aiohttp.ClientTimeout(total=self.probe_timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=limit) as session,
                session.get(url, allow_redirects=True) as resp,
            ):
                if resp.status >= 400:
                    return f"HTTP {resp.status}"
                return None
        except (TimeoutError, aiohttp.ClientError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
