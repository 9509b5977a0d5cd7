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


@dataclass(frozen=True)
class GoodCase:
    """A manifest near a bound that both the API server and the models accept."""

    name: str
    mutate: Callable[[Manifest], None]
    why: str

    def manifest(self) -> Manifest:
        m = valid_manifest(f"ok-{self.name}")
        self.mutate(m)
        return m


@dataclass(frozen=True)
class DeepCase:
    """Refused by the models (so by the operator and the workers), not by the API server.

    The CRD cannot see into free-form documents below the levels it types: `why` says
    what lets it through, `py` is the field the models' error names.
    """

    name: str
    mutate: Callable[[Manifest], None]
    py: str
    refused: str
    why: str

    def manifest(self) -> Manifest:
        m = valid_manifest(f"deep-{self.name}")
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
USERS = f"{SOURCE0}.users"
HEADERS = "spec.message.webhook.headers"
TEMPLATE = "spec.message.template"
S0 = "spec.audience.sources[0]"


def _users(*users: Any) -> Callable[[Manifest], None]:
    return _set(USERS, list(users))


def _mongo(**fields: Any) -> dict[str, Any]:
    return {"kind": "mongo", "collection": "users", **fields}


def _filter(query: dict[str, Any]) -> Callable[[Manifest], None]:
    return _set(SOURCE0, _mongo(filter=query))


def _smtp(**fields: Any) -> Callable[[Manifest], None]:
    smtp = {"host": "mail.example.com", "from": "news@example.com", **fields}
    return _both(_set("spec.message.channel", "smtp"), _set("spec.message.smtp", smtp))


def _fcm(**fields: Any) -> Callable[[Manifest], None]:
    fcm = {"serviceAccountSecretRef": {"name": "fcm"}, **fields}
    return _both(_set("spec.message.channel", "fcm"), _set("spec.message.fcm", fcm))


def _apns(**fields: Any) -> Callable[[Manifest], None]:
    apns = {
        "keySecretRef": {"name": "apns"},
        "keyId": "KEY1234567",
        "teamId": "TEAM123456",
        "topic": "com.example.app",
        **fields,
    }
    apns = {k: v for k, v in apns.items() if v is not None}  # None: leave the field out
    return _both(_set("spec.message.channel", "apns"), _set("spec.message.apns", apns))


def _many(n: int, value: Callable[[int], Any] = lambda i: f"v{i}") -> dict[str, Any]:
    return {f"k{i}": value(i) for i in range(n)}


_JS = "function() { return true; }"

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
    BadCase("tracking-links-without-base-url",
            _set("spec.message.tracking", {"links": True, "secretRef": {"name": "k"}}),
            "spec.message.tracking.baseUrl", py="spec.message.tracking"),
    BadCase("tracking-links-without-key",
            _set("spec.message.tracking", {"links": True, "baseUrl": "https://t.example"}),
            "spec.message.tracking.secretRef", py="spec.message.tracking"),
    BadCase("tracking-base-url-not-http",
            _set("spec.message.tracking", {"baseUrl": "ftp://t.example"}),
            "spec.message.tracking.baseUrl"),
    BadCase("conversion-window-in-weeks",
            _set("spec.message.tracking", {"conversionWindow": "2w"}),
            "spec.message.tracking.conversionWindow"),
    BadCase("conversion-window-1000-days",
            _set("spec.message.tracking", {"conversionWindow": "1000d"}),
            "spec.message.tracking.conversionWindow"),
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
    # spec.notify: exactly one target, e-mail only through the task's SMTP server, a set
    # of the four reportable phases.
    BadCase("notify-both-targets",
            _set("spec.notify", [{"webhook": {"url": "https://ops.example/hook"},
                                  "email": {"to": ["ops@example.com"]}}]),
            "spec.notify[0]"),
    BadCase("notify-no-target", _set("spec.notify", [{"phases": ["Finished"]}]),
            "spec.notify[0]"),
    BadCase("notify-email-without-smtp",
            _set("spec.notify", [{"email": {"to": ["ops@example.com"]}}]), "spec.notify"),
    BadCase("notify-email-not-an-address",
            _set("spec.notify", [{"email": {"to": ["ops"]}}]), "spec.notify[0].email.to[0]"),
    BadCase("notify-no-address", _set("spec.notify", [{"email": {"to": []}}]),
            "spec.notify[0].email.to"),
    BadCase("notify-phase-started",
            _set("spec.notify", [{"webhook": {"url": "https://ops.example/hook"},
                                  "phases": ["Started"]}]),
            "spec.notify[0].phases[0]"),
    BadCase("notify-phase-repeated",
            _set("spec.notify", [{"webhook": {"url": "https://ops.example/hook"},
                                  "phases": ["Failed", "Failed"]}]),
            "spec.notify[0].phases"),
    BadCase("notify-webhook-not-http",
            _set("spec.notify", [{"webhook": {"url": "ftp://ops.example"}}]),
            "spec.notify[0].webhook.url"),
    BadCase("notify-17-targets",
            _set("spec.notify", [{"webhook": {"url": f"https://ops.example/{i}"}}
                                 for i in range(17)]),
            "spec.notify"),
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
    # --- inline users: typed items, and users only on the inline kind ------------------
    BadCase("inline-without-users", _delete(USERS), f"{S0}.users"),
    BadCase("inline-empty-users", _users(), f"{S0}.users"),
    BadCase("user-empty-id", _users(""), f"{S0}.users[0]"),
    BadCase("user-id-newline", _users("u1\nu2"), f"{S0}.users[0]"),
    BadCase("user-id-carriage-return", _users("u1\r"), f"{S0}.users[0]"),
    BadCase("user-id-nul", _users("u\x001"), f"{S0}.users[0]"),
    BadCase("user-id-escape-code", _users("\x1b[31mred"), f"{S0}.users[0]"),
    BadCase("user-id-del", _users("u\x7f"), f"{S0}.users[0]"),
    BadCase("user-id-c1-control", _users("u\x85"), f"{S0}.users[0]"),
    BadCase("user-id-257-chars", _users("u" * 257), f"{S0}.users[0]"),
    BadCase("user-second-item-bad", _users("ok", "bad\tid"), f"{S0}.users[1]"),
    BadCase("user-object-without-id", _users({"name": "Ada"}), f"{S0}.users[0].id"),
    BadCase("user-object-empty-id", _users({"id": ""}), f"{S0}.users[0].id"),
    BadCase("user-object-id-newline", _users({"id": "a\nb"}), f"{S0}.users[0].id"),
    BadCase("user-object-id-257-chars", _users({"id": "u" * 257}), f"{S0}.users[0].id"),
    BadCase("user-object-65-attributes", _users({"id": "u", **_many(64)}), f"{S0}.users[0]"),
    BadCase("inline-10001-users", _set(USERS, [f"u{i}" for i in range(10_001)]),
            f"{S0}.users"),
    BadCase("exclude-inline-10001-users",
            _set("spec.audience.exclude", [{"kind": "inline",
                                            "users": [f"x{i}" for i in range(10_001)]}]),
            "spec.audience.exclude[0].users"),
    BadCase("user-nested-list", _users(["u1"]), f"{S0}.users[0]"),
    BadCase("user-empty-nested-list", _users([]), f"{S0}.users[0]"),
    BadCase("user-fraction", _users(1.5), f"{S0}.users[0]"),
    BadCase("user-boolean", _users("u1", True), f"{S0}.users[1]"),
    BadCase("users-on-mongo-source", _set(SOURCE0, _mongo(users=["u1"])), f"{S0}.users"),
    BadCase("users-on-url-source",
            _set(SOURCE0, {"kind": "url", "url": "https://x/u.csv", "format": "csv",
                           "users": ["u1"]}), f"{S0}.users"),
    BadCase("users-on-exclude-configmap",
            _set("spec.audience.exclude",
                 [{"kind": "configMap", "name": "cm", "key": "k", "users": ["u1"]}]),
            "spec.audience.exclude[0].users"),
    BadCase("exclude-inline-without-users", _set("spec.audience.exclude", [{"kind": "inline"}]),
            "spec.audience.exclude[0].users"),
    BadCase("inline-with-url", _set(f"{SOURCE0}.url", "https://x/u.csv"), S0),
    BadCase("inline-with-format", _set(f"{SOURCE0}.format", "csv"), S0),
    BadCase("mongo-with-format", _set(SOURCE0, _mongo(format="csv")), S0),
    BadCase("url-with-filter",
            _set(SOURCE0, {"kind": "url", "url": "https://x/u.csv", "format": "csv",
                           "filter": {"a": 1}}), S0),
    BadCase("configmap-format-xml",
            _set(SOURCE0, {"kind": "configMap", "name": "cm", "key": "k", "format": "xml"}),
            f"{S0}.format"),
    BadCase("mongo-secret-ref-without-name", _set(SOURCE0, _mongo(secretRef={})),
            f"{S0}.secretRef.name"),
    BadCase("url-columns-empty-key",
            _set(SOURCE0, {"kind": "url", "url": "https://x/u.csv", "format": "csv",
                           "columns": {"": "c"}}), f"{S0}.columns"),
    BadCase("too-many-sources", _set("spec.audience.sources", [{"kind": "inline",
            "users": ["u"]}] * 65), "spec.audience.sources"),
    BadCase("shards-4097", _set("spec.audience.shards", 4097), "spec.audience.shards"),
    BadCase("sources-not-a-list", _set("spec.audience.sources", {"kind": "inline"}),
            "spec.audience.sources"),
    BadCase("audience-a-string", _set("spec.audience", "everyone"), "spec.audience"),
    # --- time zones: IANA names, not the server's own zone -----------------------------
    BadCase("time-zone-local", _set("spec.schedule.timeZone", "Local"),
            "spec.schedule.timeZone"),
    BadCase("time-zone-localtime", _set("spec.schedule.timeZone", "localtime"),
            "spec.schedule.timeZone"),
    BadCase("time-zone-empty", _set("spec.schedule.timeZone", ""), "spec.schedule.timeZone"),
    BadCase("time-zone-leading-space", _set("spec.schedule.timeZone", " UTC"),
            "spec.schedule.timeZone"),
    BadCase("time-zone-65-chars", _set("spec.schedule.timeZone", "A" * 65),
            "spec.schedule.timeZone"),
    BadCase("window-time-zone-local", _set(f"{WINDOW0}.timeZone", "Local"),
            "spec.schedule.windows[0].timeZone"),
    # --- cron: every field range-checked, steps included ------------------------------
    BadCase("cron-step-0", _set("spec.schedule.cron", "*/0 * * * *"), "spec.schedule.cron"),
    BadCase("cron-range-step-0", _set("spec.schedule.cron", "1-5/0 * * * *"),
            "spec.schedule.cron"),
    BadCase("cron-minute-step-60", _set("spec.schedule.cron", "*/60 * * * *"),
            "spec.schedule.cron"),
    BadCase("cron-hour-step-24", _set("spec.schedule.cron", "0 */24 * * *"),
            "spec.schedule.cron"),
    BadCase("cron-month-step-13", _set("spec.schedule.cron", "0 0 1 */13 *"),
            "spec.schedule.cron"),
    BadCase("cron-weekday-step-8", _set("spec.schedule.cron", "0 0 * * */8"),
            "spec.schedule.cron"),
    BadCase("cron-hour-24", _set("spec.schedule.cron", "0 24 * * *"), "spec.schedule.cron"),
    BadCase("cron-day-0", _set("spec.schedule.cron", "0 0 0 * *"), "spec.schedule.cron"),
    BadCase("cron-day-32", _set("spec.schedule.cron", "0 0 32 * *"), "spec.schedule.cron"),
    BadCase("cron-month-13", _set("spec.schedule.cron", "0 0 1 13 *"), "spec.schedule.cron"),
    BadCase("cron-weekday-8", _set("spec.schedule.cron", "0 0 * * 8"), "spec.schedule.cron"),
    BadCase("cron-unknown-macro", _set("spec.schedule.cron", "@fortnightly"),
            "spec.schedule.cron"),
    BadCase("cron-129-chars", _set("spec.schedule.cron", "0 " * 64 + "0"),
            "spec.schedule.cron"),
    # --- date-times: offsets within ±14:00 -------------------------------------------
    BadCase("start-at-offset-25h", _set("spec.schedule.startAt", "2026-01-01T09:00:00+25:00"),
            "spec.schedule.startAt"),
    BadCase("start-at-offset-15h", _set("spec.schedule.startAt", "2026-01-01T09:00:00+15:00"),
            "spec.schedule.startAt"),
    BadCase("start-at-offset-minus-14-30",
            _set("spec.schedule.startAt", "2026-01-01T09:00:00-14:30"), "spec.schedule.startAt"),
    BadCase("start-at-offset-99-99", _set("spec.schedule.startAt", "2026-01-01T09:00:00-99:99"),
            "spec.schedule.startAt"),
    BadCase("start-at-without-offset", _set("spec.schedule.startAt", "2026-01-01T09:00:00"),
            "spec.schedule.startAt"),
    BadCase("too-many-windows", _set("spec.schedule.windows",
            [{"from": "09:00", "to": "10:00"}] * 33), "spec.schedule.windows"),
    BadCase("window-no-days", _set(f"{WINDOW0}.days", []), "spec.schedule.windows[0].days"),
    BadCase("window-without-from", _delete(f"{WINDOW0}.from"), "spec.schedule.windows[0].from"),
    # --- headers: no CR/LF, names are tokens -----------------------------------------
    BadCase("header-value-crlf", _set(HEADERS, {"X-Tag": "a\r\nX-Injected: 1"}),
            "spec.message.webhook.headers"),
    BadCase("header-value-lf", _set(HEADERS, {"X-Tag": "a\nb"}),
            "spec.message.webhook.headers"),
    BadCase("header-value-nul", _set(HEADERS, {"X-Tag": "a\x00"}),
            "spec.message.webhook.headers"),
    BadCase("header-value-8193-chars", _set(HEADERS, {"X-Tag": "v" * 8193}),
            "spec.message.webhook.headers"),
    BadCase("header-name-space", _set(HEADERS, {"X Tag": "v"}), "spec.message.webhook.headers"),
    BadCase("header-name-colon", _set(HEADERS, {"X-Tag:": "v"}),
            "spec.message.webhook.headers"),
    BadCase("header-name-crlf", _set(HEADERS, {"X-Tag\r\nX-B": "v"}),
            "spec.message.webhook.headers"),
    BadCase("header-name-empty", _set(HEADERS, {"": "v"}), "spec.message.webhook.headers"),
    BadCase("too-many-headers", _set(HEADERS, {f"X-H{i}": "v" for i in range(65)}),
            "spec.message.webhook.headers"),
    BadCase("webhook-timeout-0", _set("spec.message.webhook.timeoutSeconds", 0),
            "spec.message.webhook.timeoutSeconds"),
    BadCase("webhook-url-2049-chars",
            _set("spec.message.webhook.url", "https://x/" + "a" * 2039),
            "spec.message.webhook.url"),
    # --- sizes of templates and settings ---------------------------------------------
    BadCase("template-body-over-64-kib", _set(f"{TEMPLATE}.body", "b" * (64 * 1024 + 1)),
            "spec.message.template.body"),
    BadCase("template-empty-body", _set(f"{TEMPLATE}.body", ""), "spec.message.template.body"),
    BadCase("template-title-too-long", _set(f"{TEMPLATE}.title", "t" * 4097),
            "spec.message.template.title"),
    BadCase("template-link-too-long", _set(f"{TEMPLATE}.link", "l" * 8193),
            "spec.message.template.link"),
    BadCase("template-extra-over-64-kib", _set(f"{TEMPLATE}.extra", {"x": "e" * (64 * 1024 + 1)}),
            "spec.message.template.extra"),
    BadCase("template-extra-33-fields", _set(f"{TEMPLATE}.extra", _many(33)),
            "spec.message.template.extra"),
    BadCase("template-extra-empty-name", _set(f"{TEMPLATE}.extra", {"": "x"}),
            "spec.message.template.extra"),
    BadCase("template-a-string", _set(TEMPLATE, "hello"), "spec.message.template"),
    BadCase("plugin-settings-65-keys",
            _both(_set("spec.message.channel", "pigeon"), _set("spec.message.settings", _many(65))),
            "spec.message.settings"),
    BadCase("smtp-port-70000", _smtp(port=70000), "spec.message.smtp.port"),
    BadCase("smtp-from-too-short", _smtp(**{"from": "a@"}), "spec.message.smtp.from"),
    BadCase("smtp-starttls-not-bool", _smtp(starttls="maybe"), "spec.message.smtp.starttls"),
    BadCase("fcm-channel-without-fcm", _set("spec.message.channel", "fcm"), "spec.message.fcm"),
    BadCase("apns-channel-without-apns", _set("spec.message.channel", "apns"),
            "spec.message.apns"),
    BadCase("fcm-without-service-account",
            _both(_set("spec.message.channel", "fcm"), _set("spec.message.fcm", {})),
            "spec.message.fcm.serviceAccountSecretRef"),
    BadCase("fcm-ttl-negative", _fcm(ttlSeconds=-1), "spec.message.fcm.ttlSeconds"),
    BadCase("fcm-android-priority-urgent", _fcm(androidPriority="urgent"),
            "spec.message.fcm.androidPriority"),
    BadCase("fcm-endpoint-not-http", _fcm(endpoint="fcm.googleapis.com"),
            "spec.message.fcm.endpoint"),
    BadCase("apns-background-at-priority-10", _apns(pushType="background", priority=10),
            "spec.message.apns.priority"),
    BadCase("apns-background-at-default-priority", _apns(pushType="background"),
            "spec.message.apns.priority"),
    BadCase("apns-priority-7", _apns(priority=7), "spec.message.apns.priority"),
    BadCase("apns-key-id-lowercase", _apns(keyId="key1234567"), "spec.message.apns.keyId"),
    BadCase("apns-without-team", _apns(teamId=None), "spec.message.apns.teamId"),
    BadCase("apns-push-type-unknown", _apns(pushType="banner"), "spec.message.apns.pushType"),
    BadCase("apns-environment-unknown", _apns(environment="staging"),
            "spec.message.apns.environment"),
    BadCase("apns-collapse-id-65", _apns(collapseId="c" * 65), "spec.message.apns.collapseId"),
    # --- types, ranges and enums elsewhere -------------------------------------------
    BadCase("workers-a-word", _set("spec.workers", "three"), "spec.workers"),
    BadCase("rate-a-word", _set("spec.rate", {"perSecond": "fast"}), "spec.rate.perSecond"),
    BadCase("rate-above-1m", _set("spec.rate", {"perSecond": 1_000_001}), "spec.rate.perSecond"),
    BadCase("state-lowercase", _set("spec.state", "started"), "spec.state"),
    BadCase("priority-negative", _set("spec.priority", -1), "spec.priority"),
    BadCase("run-above-1e9", _set("spec.run", 1_000_000_001), "spec.run"),
    BadCase("guarantee-lowercase", _set("spec.delivery", {"guarantee": "atMostOnce"}),
            "spec.delivery.guarantee"),
    BadCase("min-sample-0", _set("spec.delivery", {"failureThreshold": {"minSample": 0}}),
            "spec.delivery.failureThreshold.minSample"),
    BadCase("failure-ratio-0", _set("spec.delivery", {"failureThreshold": {"ratio": 0}}),
            "spec.delivery.failureThreshold.ratio"),
    BadCase("backoff-multiplier-11", _set("spec.delivery", {"backoff": {"multiplier": 11}}),
            "spec.delivery.backoff.multiplier"),
    BadCase("backoff-initial-0", _set("spec.delivery", {"backoff": {"initialSeconds": 0}}),
            "spec.delivery.backoff.initialSeconds"),
    # --- MongoDB queries: no JavaScript, at the levels the CRD types -----------------
    BadCase("filter-where", _filter({"$where": "sleep(10000) || true"}),
            f"{S0}.filter.$where", py=f"{S0}.filter"),
    BadCase("filter-where-code-object", _filter({"$where": {"$code": _JS}}),
            f"{S0}.filter.$where", py=f"{S0}.filter"),
    BadCase("filter-expr-function",
            _filter({"$expr": {"$function": {"body": _JS, "args": [], "lang": "js"}}}),
            f"{S0}.filter.$expr", py=f"{S0}.filter"),
    BadCase("filter-function", _filter({"$function": {"body": _JS, "args": [], "lang": "js"}}),
            f"{S0}.filter.$function", py=f"{S0}.filter"),
    BadCase("filter-accumulator", _filter({"$accumulator": {"init": _JS}}),
            f"{S0}.filter.$accumulator", py=f"{S0}.filter"),
    BadCase("filter-or-where", _filter({"$or": [{"plan": "pro"}, {"$where": _JS}]}),
            f"{S0}.filter.$or[1].$where", py=f"{S0}.filter"),
    BadCase("filter-and-or-expr",
            _filter({"$and": [{"$or": [{"$expr": {"$eq": ["$a", "$b"]}}]}]}),
            f"{S0}.filter.$and[0].$or[0].$expr", py=f"{S0}.filter"),
    BadCase("filter-nor-accumulator", _filter({"$nor": [{"$accumulator": {}}]}),
            f"{S0}.filter.$nor[0].$accumulator", py=f"{S0}.filter"),
    BadCase("exclude-filter-where",
            _set("spec.audience.exclude", [_mongo(filter={"$where": _JS})]),
            "spec.audience.exclude[0].filter.$where", py="spec.audience.exclude[0].filter"),
    BadCase("filter-or-65-queries", _filter({"$or": [{"a": i} for i in range(65)]}),
            f"{S0}.filter.$or", py=f"{S0}.filter"),
    BadCase("filter-65-keys", _filter(_many(65, lambda i: i)), f"{S0}.filter"),
    BadCase("filter-a-list", _filter([{"a": 1}]), f"{S0}.filter"),  # type: ignore[arg-type]
    BadCase("projection-65-keys", _set(SOURCE0, _mongo(projection=_many(65, lambda i: 1))),
            f"{S0}.projection"),
]  # fmt: skip

GOOD_CASES: list[GoodCase] = [
    GoodCase("notify-webhook-and-email-with-smtp",
             _both(_set("spec.message.smtp", {"host": "mail.example", "from": "a@example.com"}),
                   _set("spec.notify", [
                       {"webhook": {"url": "https://ops.example/hook",
                                    "secretRef": {"name": "ops-hook"}}},
                       {"email": {"to": ["ops@example.com"]}, "phases": ["Failed"]},
                   ])),
             "e-mail goes through spec.message.smtp, set here beside the webhook channel"),
    GoodCase("user-id-number", _users(1001, {"id": 7}),
             "YAML writes numeric ids as numbers; they are ids (the models make them strings)"),
    GoodCase("user-id-256-chars", _users("u" * 256), "the bound itself"),
    GoodCase("inline-10000-users", _set(USERS, [f"u{i}" for i in range(10_000)]),
             "the inline cap itself"),
    GoodCase("user-id-unicode", _users("用户-42", "Zoë"), "letters of any script are not controls"),
    GoodCase("user-object-64-attributes", _users({"id": "u", **_many(63)}),
             "64 attributes, id included, is the bound itself"),
    GoodCase("header-value-tab", _set(HEADERS, {"X-Tag": "a\tb"}),
             "RFC 9110 allows a tab inside a field value"),
    GoodCase("header-64", _set(HEADERS, {f"X-H{i}": "v" for i in range(64)}), "the bound"),
    GoodCase("start-at-plus-14", _set("spec.schedule.startAt", "2026-01-01T09:00:00+14:00"),
             "Pacific/Kiritimati is UTC+14:00"),
    GoodCase("start-at-minus-12", _set("spec.schedule.startAt", "2026-01-01T09:00:00-12:00"),
             "the westernmost offset in use"),
    GoodCase("cron-steps-in-range", _set("spec.schedule.cron", "*/59 */23 */31 */12 */7"),
             "each step is within its field's span"),
    GoodCase("cron-sunday-7", _set("spec.schedule.cron", "0 9 * * 7"), "7 is Sunday, as 0 is"),
    GoodCase("time-zone-three-parts",
             _set("spec.schedule.timeZone", "America/Argentina/Buenos_Aires"), "an IANA name"),
    GoodCase("template-body-64-kib", _set(f"{TEMPLATE}.body", "b" * (64 * 1024)), "the bound"),
    GoodCase("filter-allowed-operators",
             _filter({"$or": [{"plan": {"$in": ["pro", "team"]}},
                              {"age": {"$gte": 18, "$lt": 65}, "email": {"$exists": True}}],
                      "name": {"$regex": "^A", "$options": "i"},
                      "tags": {"$elemMatch": {"$eq": "news"}, "$size": 2},
                      "score": {"$not": {"$lt": 5}}, "kind": {"$type": "string"}}),
             "comparison, logical, element, array and $regex operators are allowed"),
    GoodCase("tracking-links", _set("spec.message.tracking", {
                 "links": True, "baseUrl": "https://t.example", "secretRef": {"name": "k"},
                 "conversionWindow": "999d"}), "link tracking, the longest window"),
    GoodCase("tracking-conversions-only", _set("spec.message.tracking", {}),
             "a tracking block without links takes conversions"),
    GoodCase("projection-fields", _set(SOURCE0, _mongo(projection={"name": 1, "email": True})),
             "plain inclusion"),
]  # fmt: skip

DEEP_CASES: list[DeepCase] = [
    DeepCase("filter-where-three-levels-deep",
             _filter({"$or": [{"$and": [{"$nor": [{"$where": _JS}]}]}]}),
             f"{S0}.filter", "$or[0].$and[0].$nor[0].$where",
             "the CRD types $and/$or/$nor two levels deep; the models walk every level"),
    DeepCase("filter-elem-match-where", _filter({"tags": {"$elemMatch": {"$where": _JS}}}),
             f"{S0}.filter", "tags.$elemMatch.$where",
             "field names are free, so the CRD cannot type what is under a field"),
    DeepCase("filter-not-expr", _filter({"age": {"$not": {"$expr": {"$eq": [1, 1]}}}}),
             f"{S0}.filter", "age.$not.$expr", "under a field, as above"),
    DeepCase("filter-field-function", _filter({"a": {"$function": {"body": _JS}}}),
             f"{S0}.filter", "a.$function", "under a field, as above"),
    DeepCase("filter-mod-not-allowed", _filter({"a": {"$mod": [2, 0]}}),
             f"{S0}.filter", "a.$mod", "an allow-list: operators not listed are refused"),
    DeepCase("filter-regex-too-long", _filter({"name": {"$regex": "a" * 1025}}),
             f"{S0}.filter", "name.$regex", "a regex is at most 1,024 characters"),
    DeepCase("projection-function",
             _set(SOURCE0, _mongo(projection={"x": {"$function": {"body": _JS}}})),
             f"{S0}.projection", "x.$function",
             "a computed projection can run an aggregation expression"),
    DeepCase("projection-field-path", _set(SOURCE0, _mongo(projection={"x": "$password"})),
             f"{S0}.projection", "x", "a string projection is an aggregation expression"),
]  # fmt: skip


def pydantic_paths(error: ValidationError) -> str:
    """Every error of `error` as "path: message" lines."""
    return "\n".join(describe_errors(error))


def names_field(text: str, path: str) -> bool:
    """`text` names `path`, literally or as the message written for every list item."""
    return path in text or re.sub(r"\[\d+\]", "[]", path) in text
