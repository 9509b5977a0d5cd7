"""Link click tracking (pure: no store, no I/O): tokens, link targets, link rewriting.

A tracked link is `<baseUrl>/c/<token>`. The token names (run id, user, link index) and
carries a truncated HMAC-SHA256 of them under the tracker key (a Secret). The link index
points into the run's link targets, which `link_targets` derives from the run's frozen
message templates: the tracker redirects to a target it reads from the run document,
never to anything the URL says, so a tracked link is no open redirect.

Only links written literally in the templates are tracked: a URL that a template builds
per recipient (`https://shop.example/?u={{ user }}`) has no frozen target and is sent as
it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

__all__ = [
    "CLICK_PATH",
    "BadToken",
    "Click",
    "Conversion",
    "LinkRewriter",
    "conversion_window",
    "is_event_name",
    "is_prefetcher",
    "link_targets",
    "parse_conversion",
    "parse_window",
    "rewrite_links",
    "rewrite_message",
    "run_targets",
    "sign",
    "tracked_url",
    "verify",
]

CLICK_PATH = "/c/"
# Where the worker finds the key that signs its links (the operator maps the task's
# spec.message.tracking.secretRef there) and the tracker the keys that verify them.
KEY_ENV = "PUSHTASK_TRACKER_KEY"
PREVIOUS_KEY_ENV = "PUSHTASK_TRACKER_KEY_PREVIOUS"
MAC_BYTES = 12  # 96 bits: forging one token takes ~2^95 tries at the tracker
_SEP = "\n"  # no run id holds it (nor an inline user id: models.UserId)

# An http(s) URL in text: up to whitespace, quotes, angle brackets or Jinja braces.
_URL = re.compile(r"https?://[^\s<>\"'{}]+")
# Punctuation that ends a sentence rather than the URL ("see https://x.example/a.").
_TRAILING = ".,;:!?)]"


class BadToken(ValueError):
    """A token that is malformed, or not signed by any of the tracker's keys."""


@dataclass(frozen=True)
class Click:
    """What a valid token names."""

    run_id: str
    user: str
    link: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]


def sign(key: bytes, run_id: str, user: str, link: int) -> str:
    """The URL-safe token of one recipient's link: base64url(payload + truncated MAC)."""
    if not key:
        raise ValueError("the tracker key is empty")
    payload = f"{run_id}{_SEP}{user}{_SEP}{link}".encode()
    return _b64(payload + _mac(key, payload))


def verify(keys: Iterable[bytes], token: str) -> Click:
    """The click a token names, if one of `keys` signed it (the current key first, then a
    previous one during a rotation); BadToken otherwise. The MAC is compared in constant
    time."""
    try:
        raw = _unb64(token)
    except (binascii.Error, ValueError):
        raise BadToken("not base64url") from None
    payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if len(raw) <= MAC_BYTES or not any(
        k and hmac.compare_digest(_mac(k, payload), mac) for k in keys
    ):
        raise BadToken("bad signature")
    try:
        # A run id never holds the separator; a user id read from a source might: it is
        # whatever lies between the first and the last.
        run_id, rest = payload.decode().split(_SEP, 1)
        user, link = rest.rsplit(_SEP, 1)
        index = int(link)
    except ValueError:
        raise BadToken("malformed payload") from None
    if index < 0 or not run_id or not user:
        raise BadToken("malformed payload")
    return Click(run_id, user, index)


def tracked_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}{CLICK_PATH}{token}"


def _urls(text: str) -> Iterable[tuple[int, int, str]]:
    """(start, end, url) of each URL in `text`, trailing sentence punctuation left out."""
    for m in _URL.finditer(text):
        url = m.group(0).rstrip(_TRAILING)
        yield m.start(), m.start() + len(url), url


def _template_texts(template: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, str]]:
    for key in sorted(template):
        value = template[key]
        if isinstance(value, Mapping):
            yield from _template_texts(value, f"{prefix}{key}.")
        elif isinstance(value, str):
            yield f"{prefix}{key}", value


def link_targets(template: Mapping[str, Any], base_url: str | None = None) -> tuple[str, ...]:
    """The run's link targets, by index: each distinct URL written literally in the
    message templates (`spec.message.template` as the run document froze it), fields in
    name order, URLs in text order. A URL that runs into a Jinja expression is built per
    recipient and left out; so are the tracker's own links."""
    seen: dict[str, None] = {}
    for _path, text in _template_texts(template):
        for _start, end, url in _urls(text):
            if text.startswith("{", end) or (base_url and url.startswith(base_url.rstrip("/"))):
                continue
            seen.setdefault(url, None)
    return tuple(seen)


def run_targets(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The link targets of a run, from its frozen spec (the run document's `spec`, by
    alias): what the worker rewrites and the tracker redirects to, derived alike."""
    message = spec.get("message") or {}
    base_url = (message.get("tracking") or {}).get("baseUrl")
    return link_targets(message.get("template") or {}, base_url)


def rewrite_links(text: str, index: Mapping[str, int], url_of: Callable[[int], str]) -> str:
    """`text` with each URL that is one of the run's targets (`index`: url -> link index)
    replaced by `url_of(link index)`. Other text, other URLs included, is left as it is;
    a tracked URL is no target, so rewriting twice changes nothing more."""
    out: list[str] = []
    last = 0
    for start, end, url in _urls(text):
        link = index.get(url)
        if link is None:
            continue
        out += [text[last:start], url_of(link)]
        last = end
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def rewrite_message(
    message: Mapping[str, Any], index: Mapping[str, int], url_of: Callable[[int], str]
) -> dict[str, Any]:
    """A rendered message (nested dicts of strings) with its tracked links rewritten."""
    out: dict[str, Any] = {}
    for key, value in message.items():
        if isinstance(value, Mapping):
            out[key] = rewrite_message(value, index, url_of)
        elif isinstance(value, str) and "://" in value:
            out[key] = rewrite_links(value, index, url_of)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class LinkRewriter:
    """A run's link rewriting, fixed for the run: the worker's side of tracking."""

    run_id: str
    base_url: str
    key: bytes
    targets: tuple[str, ...]
    index: Mapping[str, int]  # target url -> link index

    @classmethod
    def for_run(cls, run_id: str, spec: Mapping[str, Any], key: bytes) -> LinkRewriter | None:
        """The run's rewriting, from its frozen spec (by alias, as the run document holds
        it); None when the run does not track links."""
        tracking = (spec.get("message") or {}).get("tracking") or {}
        if not tracking.get("links"):
            return None
        if not key:
            raise ValueError(f"tracking links needs the tracker key ({KEY_ENV})")
        targets = run_targets(spec)
        index = {url: i for i, url in enumerate(targets)}
        return cls(run_id, str(tracking["baseUrl"]), key, targets, index)

    def rewrite(self, message: Mapping[str, Any], user: str) -> dict[str, Any]:
        """One recipient's rendered message with each tracked link made theirs."""
        if not self.targets:
            return dict(message)
        return rewrite_message(
            message,
            self.index,
            lambda link: tracked_url(self.base_url, sign(self.key, self.run_id, user, link)),
        )


# Link expanders and mail scanners that fetch a link before (or without) a person: their
# fetch is redirected like any other, but is no click. Matched case-insensitively as
# substrings of the User-Agent.
PREFETCHERS = (
    "slackbot",  # Slackbot-LinkExpanding
    "facebookexternalhit",
    "facebot",
    "twitterbot",
    "linkedinbot",
    "discordbot",
    "whatsapp",
    "telegrambot",
    "skypeuripreview",
    "googlebot",
    "google-inspectiontool",
    "bingbot",
    "bingpreview",
    "applebot",
    "microsoft office",  # Outlook SafeLinks and Office previews
    "ms-office",
    "barracuda",
    "proofpoint",
    "mimecast",
)


def is_prefetcher(user_agent: str | None) -> bool:
    """True when the User-Agent is a known link prefetcher (never a person's click)."""
    if not user_agent:
        return False
    ua = user_agent.lower()
    return any(p in ua for p in PREFETCHERS)


# -- conversions ---------------------------------------------------------------------------

# spec.message.tracking.conversionWindow: 1-999 minutes, hours or days ("30m", "48h",
# "7d"). The pattern is the whole rule, so the API server and the models agree on it.
WINDOW_PATTERN = r"^[1-9][0-9]{0,2}[mhd]$"
DEFAULT_WINDOW = "7d"
_WINDOW_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
# A conversion event's name: also a key of the store's counters and of status.conversions,
# so no dots, no dollar signs, nothing to escape.
EVENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
_EVENT_RE = re.compile(EVENT_PATTERN)


def parse_window(text: str) -> timedelta:
    """A conversion window ("7d") as a timedelta; ValueError when malformed."""
    if not re.match(WINDOW_PATTERN, text):
        raise ValueError(f"{text!r} is not 1-999 minutes, hours or days, such as 30m, 48h or 7d")
    return int(text[:-1]) * _WINDOW_UNITS[text[-1]]


def conversion_window(spec: Mapping[str, Any]) -> timedelta:
    """The run's conversion window, from its frozen spec (by alias)."""
    tracking = (spec.get("message") or {}).get("tracking") or {}
    return parse_window(str(tracking.get("conversionWindow") or DEFAULT_WINDOW))


def is_event_name(name: Any) -> bool:
    return isinstance(name, str) and _EVENT_RE.match(name) is not None


@dataclass(frozen=True)
class Conversion:
    """A conversion posted to the tracker: an event for a tracked link's token, or for a
    recipient named by (task namespace, task name, run, user)."""

    event: str
    token: str | None = None
    namespace: str | None = None
    name: str | None = None
    run: int | None = None
    user: str | None = None


def parse_conversion(body: Any) -> Conversion:
    """The conversion a request body asks for; ValueError saying what is wrong.

    {"event": "purchase", "token": "<a tracked link's token>"}, or
    {"event": "purchase", "task": "<namespace>/<name>", "run": 3, "user": "u-42"}.
    """
    if not isinstance(body, Mapping):
        raise ValueError("the body must be a JSON object")
    event = body.get("event")
    if not isinstance(event, str) or not is_event_name(event):
        raise ValueError(
            "event: a name of 1-63 letters, digits, '_' or '-', starting with a letter or digit"
        )
    token = body.get("token")
    if token is not None:
        if not isinstance(token, str) or not token or len(token) > 2048:
            raise ValueError("token: the token of a tracked link (the part after /c/)")
        if any(k in body for k in ("task", "run", "user")):
            raise ValueError("give either token, or task, run and user")
        return Conversion(event, token=token)
    task, run, user = body.get("task"), body.get("run"), body.get("user")
    if not isinstance(task, str) or task.count("/") != 1 or "" in task.split("/"):
        raise ValueError("task: namespace/name of the PushTask (or give a token)")
    if isinstance(run, bool) or not isinstance(run, int) or run < 1:
        raise ValueError("run: the run number, an integer from 1")
    if not isinstance(user, str) or not user or len(user) > 256:
        raise ValueError("user: the recipient's user id")
    namespace, name = task.split("/")
    return Conversion(event, namespace=namespace, name=name, run=run, user=user)
