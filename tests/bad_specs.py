"""Bad PushTask manifests, shared by the model tests and the API-server tests.

Each case breaks one thing in a valid manifest and names the field the rejection must
point at: the API server's error must contain `path`; the models' error (formatted by
`pydantic_paths`) must contain `py` (default: `path`, where `[N]` may read `[]` in a
message written once for every list item).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from pushtask.models import describe_errors

Manifest = dict[str, Any]


def valid_manifest(name: str = "bad") -> Manifest:
    """A small valid manifest touching every part a case below breaks."""
    return {
        "apiVersion": "pushtask.dev/v1alpha1",
        "kind": "PushTask",
        "metadata": {"name": name},
        "spec": {
            "audience": {"sources": [{"kind": "inline", "users": ["u1", {"id": "u2"}]}]},
            "message": {
                "channel": "webhook",
                "webhook": {"url": "https://example.com/hook"},
                "template": {"body": "hello {{ user }}"},
            },
            "schedule": {"windows": [{"from": "09:00", "to": "17:00"}]},
        },
    }


@dataclass(frozen=True)
class BadCase:
    name: str
    mutate: Callable[[Manifest], None]
    path: str
    py: str | None = None

    def manifest(self) -> Manifest:
        m = valid_manifest(f"bad-{self.name}")
        self.mutate(m)
        return m


def _set(dotted: str, value: Any) -> Callable[[Manifest], None]:
    def mutate(m: Manifest) -> None:
        node: Any = m
        keys = [int(k) if k.isdigit() else k for k in dotted.split(".")]
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return mutate


def _delete(dotted: str) -> Callable[[Manifest], None]:
    def mutate(m: Manifest) -> None:
        node: Any = m
        keys = [int(k) if k.isdigit() else k for k in dotted.split(".")]
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return mutate


def _both(*mutations: Callable[[Manifest], None]) -> Callable[[Manifest], None]:
    def mutate(m: Manifest) -> None:
        for mutation in mutations:
            mutation(m)

    return mutate


SOURCE0 = "spec.audience.sources.0"
WINDOW0 = "spec.schedule.windows.0"

BAD_CASES: list[BadCase] = [
    BadCase("workers-0", _set("spec.workers", 0), "spec.workers"),
    BadCase("workers-1001", _set("spec.workers", 1001), "spec.workers"),
    BadCase("negative-rate", _set("spec.rate", {"perSecond": -5}), "spec.rate.perSecond"),
    BadCase("zero-rate", _set("spec.rate", {"perSecond": 0}), "spec.rate.perSecond"),
    BadCase("webhook-without-url", _set("spec.message.webhook", {}), "spec.message.webhook.url"),
    BadCase("webhook-url-not-http", _set("spec.message.webhook.url", "ftp://x"),
            "spec.message.webhook.url"),
    BadCase("webhook-channel-without-webhook", _delete("spec.message.webhook"),
            "spec.message.webhook"),
    BadCase("smtp-channel-without-smtp", _set("spec.message.channel", "smtp"),
            "spec.message.smtp"),
    BadCase("channel-bad-name", _set("spec.message.channel", "Web Hook"),
            "spec.message.channel"),
    BadCase("template-without-body", _set("spec.message.template", {"title": "t"}),
            "spec.message.template.body"),
    BadCase("bad-cron", _set("spec.schedule.cron", "every morning"), "spec.schedule.cron"),
    BadCase("cron-six-fields", _set("spec.schedule.cron", "0 0 9 * * *"), "spec.schedule.cron"),
    BadCase("cron-minute-61", _set("spec.schedule.cron", "61 9 * * *"), "spec.schedule.cron"),
    BadCase("unknown-time-zone", _set("spec.schedule.timeZone", "Mars/Olympus"),
            "spec.schedule.timeZone"),
    BadCase("offset-time-zone", _set("spec.schedule.timeZone", "+05:00"),
            "spec.schedule.timeZone"),
    BadCase("window-unknown-time-zone", _set(f"{WINDOW0}.timeZone", "Europe/Atlantis"),
            "spec.schedule.windows[0].timeZone"),
    BadCase("window-25-00", _set(f"{WINDOW0}.from", "25:00"), "spec.schedule.windows[0].from"),
    BadCase("window-9-30", _set(f"{WINDOW0}.to", "9:30"), "spec.schedule.windows[0].to"),
    BadCase("window-from-equals-to", _set(f"{WINDOW0}.to", "09:00"),
            "spec.schedule.windows[0].to"),
    BadCase("window-duplicate-day", _set(f"{WINDOW0}.days", ["Mon", "Mon"]),
            "spec.schedule.windows[0].days"),
    BadCase("window-bad-day", _set(f"{WINDOW0}.days", ["Monday"]),
            "spec.schedule.windows[0].days[0]"),
    BadCase("start-at-not-a-time", _set("spec.schedule.startAt", "tomorrow"),
            "spec.schedule.startAt"),
    BadCase("unknown-state", _set("spec.state", "Running"), "spec.state"),
    BadCase("run-0", _set("spec.run", 0), "spec.run"),
    BadCase("priority-1001", _set("spec.priority", 1001), "spec.priority"),
    BadCase("unknown-source-kind", _set(f"{SOURCE0}.kind", "ftp"),
            "spec.audience.sources[0].kind", py="'kind'"),
    BadCase("shards-0", _set("spec.audience.shards", 0), "spec.audience.shards"),
    BadCase("empty-sources", _set("spec.audience.sources", []), "spec.audience.sources"),
    BadCase("mongo-without-collection", _set(SOURCE0, {"kind": "mongo", "filter": {"a": 1}}),
            "spec.audience.sources[0].collection"),
    BadCase("exclude-mongo-without-collection",
            _set("spec.audience.exclude", [{"kind": "mongo"}]),
            "spec.audience.exclude[0].collection"),
    BadCase("inline-with-mongo-fields", _set(f"{SOURCE0}.collection", "users"),
            "spec.audience.sources[0]"),
    BadCase("configmap-without-key",
            _set(SOURCE0, {"kind": "configMap", "name": "cm"}),
            "spec.audience.sources[0].key"),
    BadCase("url-source-lines-format",
            _set(SOURCE0, {"kind": "url", "url": "https://x/u.txt", "format": "lines"}),
            "spec.audience.sources[0].format"),
    BadCase("url-source-without-format",
            _set(SOURCE0, {"kind": "url", "url": "https://x/u.csv"}),
            "spec.audience.sources[0].format"),
    BadCase("max-attempts-0", _set("spec.delivery", {"maxAttempts": 0}),
            "spec.delivery.maxAttempts"),
    BadCase("max-attempts-21", _set("spec.delivery", {"maxAttempts": 21}),
            "spec.delivery.maxAttempts"),
    BadCase("failure-ratio-above-1", _set("spec.delivery", {"failureThreshold": {"ratio": 1.5}}),
            "spec.delivery.failureThreshold.ratio"),
    BadCase("backoff-max-below-initial",
            _set("spec.delivery", {"backoff": {"initialSeconds": 30, "maxSeconds": 5}}),
            "spec.delivery.backoff.maxSeconds"),
    BadCase("guarantee-unknown", _set("spec.delivery", {"guarantee": "ExactlyOnce"}),
            "spec.delivery.guarantee"),
    BadCase("unknown-spec-field", _set("spec.wrokers", 3), "spec.wrokers"),
]  # fmt: skip


def pydantic_paths(error: ValidationError) -> str:
    """Every error of `error` as "path: message" lines."""
    return "\n".join(describe_errors(error))


def names_field(text: str, path: str) -> bool:
    """`text` names `path`, literally or as the message written for every list item."""
    return path in text or re.sub(r"\[\d+\]", "[]", path) in text
