"""Priority tiers degraded live: a ConfigMap the operator watches, no restart.

At a traffic peak an on-call engineer degrades the tiers that can wait:

    kubectl -n <release namespace> patch configmap <release>-degrade --type=merge \\
        -p '{"data": {"low": "graceful"}}'

Each key names a tier (`tiers` in the chart), each value says how it is degraded:
`graceful` (its tasks pause after their in-flight window), `immediate` (their in-flight
sends are cancelled too, the recipients following the task's guarantee) or `off` (not
degraded, even if the chart's `degradedTiers` says so). A key the operator cannot use is
ignored with a Warning Event on the ConfigMap; the other keys still apply.

Why a ConfigMap and not a cluster-scoped resource of our own: it needs no second CRD, it
lives in the release's namespace (so a namespaced install can have it too), the right to
change it can be granted on that one object (`resourceNames`), and `kubectl edit` is all
anyone needs. The chart creates it without `data`, so `helm upgrade` never resets what
was changed live (Helm's three-way merge leaves alone fields its manifest never had).

`parse` is pure; `DegradeWatch` follows the object with a list + watch on its own
thread (the `kubernetes` client is synchronous) and hands each change to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch

from pushtask_operator.settings import Degrade

log = logging.getLogger("pushtask.operator")

MODES: tuple[str, ...] = ("graceful", "immediate", "off")
# The API server ends a watch after this long; the loop then lists and watches again.
WATCH_SECONDS = 60
MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class DegradeView:
    """The ConfigMap as last seen: its entries and its identity (for Events on it)."""

    data: Mapping[str, str]
    meta: Mapping[str, Any] | None  # None: the ConfigMap does not exist


def parse(
    data: Mapping[str, str], tiers: Mapping[str, Any]
) -> tuple[dict[str, Degrade | None], list[str]]:
    """Tier -> its mode (None for `off`), and one message per entry that was ignored."""
    out: dict[str, Degrade | None] = {}
    problems: list[str] = []
    for tier, raw in sorted(data.items()):
        mode = str(raw).strip().lower()
        if tier not in tiers:
            problems.append(f"unknown tier {tier!r}; tiers are {', '.join(sorted(tiers))}")
        elif mode not in MODES:
            problems.append(f"tier {tier!r}: {raw!r} is not one of {', '.join(MODES)}")
        else:
            out[tier] = None if mode == "off" else mode  # type: ignore[assignment]
    return out, problems


def effective(
    base: Mapping[str, Degrade], live: Mapping[str, Degrade | None]
) -> dict[str, Degrade]:
    """The chart's `degradedTiers`, overridden tier by tier by the ConfigMap."""
    merged: dict[str, Degrade | None] = {**base, **live}
    return {tier: mode for tier, mode in merged.items() if mode is not None}


def _view(obj: Any) -> DegradeView:
    meta = obj.metadata
    return DegradeView(
        data=dict(obj.data or {}),
        meta={
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
            "resourceVersion": meta.resource_version,
        },
    )


class DegradeWatch:
    """Follows one ConfigMap; `on_change` runs on `loop` with each new view."""

    def __init__(
        self,
        api: Callable[[], client.ApiClient],
        namespace: str,
        name: str,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[DegradeView], None],
    ) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self.loop, self.on_change = loop, on_change
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._last: DegradeView | None = None
        self._thread = threading.Thread(target=self._run, name="degrade-watch", daemon=True)

    def read(self) -> DegradeView:
        """One read (list by name): the view and the resourceVersion to watch from."""
        view, _ = self._list()
        return view

    def start(self, first: DegradeView | None) -> None:
        self._last = first
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def _list(self) -> tuple[DegradeView, str]:
        core = client.CoreV1Api(self.api())
        listed = core.list_namespaced_config_map(
            self.namespace, field_selector=f"metadata.name={self.name}", _request_timeout=30
        )
        items = listed.items or []
        view = _view(items[0]) if items else DegradeView({}, None)
        return view, str(getattr(listed.metadata, "resource_version", None) or "")

    def _emit(self, view: DegradeView) -> None:
        if self._last is not None and (self._last.data, bool(self._last.meta)) == (
            view.data,
            bool(view.meta),
        ):
            return
        self._last = view
        self.loop.call_soon_threadsafe(self.on_change, view)

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                view, version = self._list()
                self._emit(view)
                self._watch = watch.Watch()
                core = client.CoreV1Api(self.api())
                for event in self._watch.stream(
                    core.list_namespaced_config_map,
                    self.namespace,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=version,
                    timeout_seconds=WATCH_SECONDS,
                ):
                    if event["type"] == "DELETED":
                        self._emit(DegradeView({}, None))
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self._emit(_view(event["object"]))
                backoff = 1.0
            except Exception as exc:  # the API server away, RBAC, 410 Gone: list again
                if self._stop.is_set():
                    return
                log.warning("watch of ConfigMap %s/%s: %s", self.namespace, self.name, exc)
                self._stop.wait(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
