"""The PushTask API (pushtask.dev/v1alpha1): pydantic models, the single source of truth.

`crds/pushtask.yaml` is generated from these models (`python -m pushtask.crdgen`). Cross-
field rules live beside the model they constrain, in `__cel__`: each `Rule` carries the
CEL expression the API server evaluates and a Python twin, so the operator and
`kubectl push` reject a bad spec locally with the same message.

Python names are snake_case; YAML/JSON names are camelCase aliases (`populate_by_name`).
Dump a spec for the API with `model_dump(by_alias=True, mode="json", exclude_none=True)`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from pushtask import mongoquery
from pushtask.states import DesiredState, Phase
from pushtask.tracking import DEFAULT_WINDOW, WINDOW_PATTERN
from pushtask.validators import (
    CRON_PATTERN,
    DATE_TIME_OFFSET_PATTERN,
    HEADER_NAME_PATTERN,
    HEADER_VALUE_PATTERN,
    HHMM_PATTERN,
    NO_CONTROL_PATTERN,
    TIME_ZONE_CEL,
    WEEKDAYS,
    is_header_name,
    is_valid_cron,
    is_valid_time_zone,
    offset_in_range,
)

GROUP = "pushtask.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "PushTask"
PLURAL = "pushtasks"
SINGULAR = "pushtask"
SHORT_NAMES = ("pt",)
CATEGORIES = ("pushtask",)


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: CEL for the API server, `check` for Python, one message.

    `on` names a property (its alias): the CEL `self` is then that property's value and
    the rule is attached to it (so the error path names it); otherwise `self` is the
    object. `check` always receives the model instance; `None` marks a transition rule
    (it needs `oldSelf`), checked in Python by `validate_update`.
    """

    rule: str
    message: str
    check: Callable[[Any], bool] | None
    on: str | None = None
    field_path: str | None = None  # CEL fieldPath, relative to the object: ".webhook"
    reason: str | None = None  # FieldValueRequired | FieldValueInvalid | FieldValueForbidden

    def to_crd(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def _attach_rules(schema: dict[str, Any], cls: type) -> None:
    """pydantic's json_schema_extra hook: put each model's `__cel__` into its schema."""
    for rule in getattr(cls, "__cel__", ()):
        target = schema if rule.on is None else schema["properties"][rule.on]
        target.setdefault("x-kubernetes-validations", []).append(rule.to_crd())


class ApiModel(BaseModel):
    """Base of every spec model: camelCase aliases, unknown fields rejected, CEL twins."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,  # the docstring under a field is its description
        json_schema_extra=_attach_rules,
    )
    __cel__: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).__cel__:
            if rule.check is not None and not rule.check(self):
                raise ValueError(rule.message)
        return self


def _default_of(model: type[BaseModel]) -> Any:
    """json_schema_extra declaring a model's whole default object in the CRD."""
    # In full, not {}: the API server validates a default (CEL included) before it fills
    # the nested defaults in, so {} would fail the rules that read those fields.
    return {"default": model().model_dump(by_alias=True, mode="json", exclude_none=True)}


def _number_to_str(value: Any) -> Any:
    # YAML reads `1001` as an int; a user id is a string everywhere downstream.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


# --- bounds (crdgen writes them into the CRD and docs/reference.md, Limits) -----------

MAX_ID_LENGTH = 256
MAX_INLINE_USERS = 10_000
MAX_ATTRIBUTES = 64
MAX_TEMPLATE_LENGTH = 64 * 1024
MAX_TITLE_LENGTH = 4096
MAX_LINK_LENGTH = 8192
MAX_EXTRA_FIELDS = 32
MAX_HEADERS = 64
MAX_HEADER_VALUE_LENGTH = 8192
MAX_COLUMNS = 256
MAX_SETTINGS = 64
QUERY_CEL_DEPTH = 2  # $and/$or/$nor levels the CRD types (deeper: operator and workers)

UserId = Annotated[
    str,
    BeforeValidator(_number_to_str),
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=NO_CONTROL_PATTERN),
]
Name = Annotated[str, StringConstraints(min_length=1, max_length=253)]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
HttpUrl = Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2048)]
TimeZone = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def _tz_rule(path: str, attr: str) -> Rule:
    return Rule(
        TIME_ZONE_CEL,
        f"{path} must be an IANA time zone name such as UTC or Europe/Berlin (not Local)",
        lambda m: getattr(m, attr) is None or is_valid_time_zone(getattr(m, attr)),
        on="timeZone",
    )


# --- audience -------------------------------------------------------------------------


class SecretRef(ApiModel):
    """A Secret in the PushTask's namespace."""

    name: Name
    """Secret name."""


class MongoSecretRef(SecretRef):
    """A Secret key holding a MongoDB URI."""

    key: Name = "uri"
    """Key in the Secret holding the MongoDB URI."""


class InlineUser(ApiModel):
    """A user with attributes for the templates: {id: ..., name: ..., email: ...}."""

    model_config = ConfigDict(extra="allow")
    id: UserId
    """The user id."""

    @model_validator(mode="after")
    def _bounded_attributes(self) -> Self:
        if len(self.model_extra or {}) + 1 > MAX_ATTRIBUTES:
            raise ValueError(f"a user has at most {MAX_ATTRIBUTES} attributes (id included)")
        return self


_ID_BOUNDS = {"minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": NO_CONTROL_PATTERN}

# A structural schema cannot type "a string or an object", and the API server gives CEL
# no view of an untyped node; but OpenAPI keywords apply only to values of their own type,
# so one untyped node carries the string rules, the object rules and "not a list" at once
# (minItems 1 with maxItems 0 holds for no list), refuses fractions (multipleOf 1) and
# booleans (not an enum of them). Integers stay ids, as YAML writes them.
InlineEntry = Annotated[
    UserId | InlineUser,
    WithJsonSchema(
        {
            "x-kubernetes-preserve-unknown-fields": True,
            "description": (
                f"A user id (a string of 1-{MAX_ID_LENGTH} characters, no control "
                "characters) or an object {id, ...attributes}; never a list."
            ),
            **_ID_BOUNDS,
            "required": ["id"],
            "properties": {
                "id": {
                    "x-kubernetes-int-or-string": True,
                    "description": "The user id.",
                    **_ID_BOUNDS,
                }
            },
            "maxProperties": MAX_ATTRIBUTES,
            "minItems": 1,
            "maxItems": 0,
            "multipleOf": 1,
            "not": {"enum": [True, False]},
        }
    ),
]


class InlineSource(ApiModel):
    """An inline list of users (the seed's only kind)."""

    kind: Literal["inline"]
    users: list[InlineEntry] = Field(
        min_length=1,
        max_length=MAX_INLINE_USERS,
        description=(
            "User ids, or objects {id, ...attributes} whose attributes the templates can "
            "use; at most 10,000 (for more, use a configMap, url or mongo source)."
        ),
    )
    send_at_field: FieldName | None = None
    """Attribute holding the recipient's own send time (RFC 3339); unset: send at once."""

    @field_validator("users", mode="before")
    @classmethod
    def _at_most_the_inline_cap(cls, users: Any) -> Any:
        # The whole spec lives in etcd and in every run document: a list this long
        # belongs in a source that is read in ranges.
        if isinstance(users, list) and len(users) > MAX_INLINE_USERS:
            raise ValueError(
                f"an inline source holds at most {MAX_INLINE_USERS:,} users (this one has "
                f"{len(users):,}): put more in a configMap, url or mongo source"
            )
        return users


def _query_level(depth: int) -> dict[str, Any]:
    """The CRD's view of one query level: JavaScript operators refused by CEL.

    A filter is free-form, so CEL cannot walk it; but the operators that run code sit at
    query level, and query levels nest only through $and/$or/$nor, which the CRD can
    type for a few levels. Deeper levels and field-level operators are left to the
    models' allow-list (operator and workers), which sees everything.
    """
    props: dict[str, Any] = {
        op: {
            **({"x-kubernetes-int-or-string": True} if op == "$where" else {"type": "object"}),
            **({} if op == "$where" else {"x-kubernetes-preserve-unknown-fields": True}),
            "description": f"Refused: {op} runs code in the database.",
            "x-kubernetes-validations": [
                {
                    "rule": "false",
                    "message": f"{op} is not allowed: no JavaScript or aggregation "
                    "expressions in a query (docs/reference.md, Limits)",
                }
            ],
        }
        for op in mongoquery.JAVASCRIPT
    }
    if depth < QUERY_CEL_DEPTH:
        for op in sorted(mongoquery.LOGICAL):
            props[op] = {
                "type": "array",
                "description": f"{op}: a list of queries.",
                "maxItems": mongoquery.MAX_LOGICAL_ITEMS,
                "items": _query_level(depth + 1),
            }
    return {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "maxProperties": mongoquery.MAX_KEYS,
        "properties": props,
    }


def _checked(kind: mongoquery.Kind) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def check(doc: dict[str, Any]) -> dict[str, Any]:
        found = mongoquery.refusal(doc, kind, path="")
        if found is not None:
            where = f" (at {found.path})" if found.path else ""
            raise ValueError(f"{found.reason}{where}")
        return doc

    return check


QueryFilter = Annotated[
    dict[str, Any],
    AfterValidator(_checked("filter")),
    WithJsonSchema({**_query_level(0), "description": "A MongoDB query filter."}),
]
QueryProjection = Annotated[
    dict[str, Any],
    AfterValidator(_checked("projection")),
    WithJsonSchema(
        {
            "type": "object",
            "additionalProperties": True,
            "maxProperties": mongoquery.MAX_KEYS,
            "description": "A MongoDB projection.",
        }
    ),
]


class MongoSource(ApiModel):
    """A query over a MongoDB collection of users."""

    kind: Literal["mongo"]
    secret_ref: MongoSecretRef | None = None
    """Secret with the MongoDB URI; unset: the system's own MongoDB."""
    database: Name | None = None
    """Database; unset: the URI's database, else the system database."""
    collection: Name
    """Collection to query."""
    filter: QueryFilter = {}
    """Query filter (MongoDB query language; allowed operators: docs/reference.md, Limits)."""
    projection: QueryProjection | None = None
    """Projection: the attributes the templates need (0/1, $slice, $elemMatch)."""
    id_field: FieldName = "_id"
    """Field holding the user id."""
    send_at_field: FieldName | None = None
    """Field holding the recipient's own send time; unset: send at once."""
    allow_missing: bool = False
    """A missing collection reads as empty; unset: fails an exclusion's run, skips a source."""


class ConfigMapSource(ApiModel):
    """A key of a ConfigMap in the PushTask's namespace."""

    kind: Literal["configMap"]
    name: Name
    """ConfigMap name."""
    key: Name
    """Key in the ConfigMap."""
    format: Literal["lines", "csv", "jsonl"] = "lines"
    """lines: one user id per line; csv: a header row; jsonl: one JSON object per line."""
    id_field: FieldName = "id"
    """Column or attribute holding the user id (csv, jsonl)."""
    send_at_field: FieldName | None = None
    """Column or attribute holding the recipient's own send time (csv, jsonl)."""

    __cel__ = (
        Rule(
            "!has(self.sendAtField) || (has(self.format) && self.format != 'lines')",
            "sendAtField needs format csv or jsonl",
            lambda m: m.send_at_field is None or m.format != "lines",
            field_path=".sendAtField",
        ),
    )


class UrlSource(ApiModel):
    """A CSV or JSON Lines file at an http(s) URL."""

    kind: Literal["url"]
    url: HttpUrl
    """http(s) URL of the file."""
    format: Literal["csv", "jsonl"]
    """csv: a header row names the columns; jsonl: one JSON object per line."""
    id_field: FieldName = "id"
    """Column or attribute holding the user id."""
    columns: Annotated[dict[FieldName, FieldName], Field(max_length=MAX_COLUMNS)] | None = None
    """Template attribute name -> column name; unset: every column under its own name."""
    send_at_field: FieldName | None = None
    """Column holding the recipient's own send time; unset: send at once."""


LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
LabelKey = Annotated[
    str, StringConstraints(min_length=1, max_length=316, pattern=LABEL_KEY_PATTERN)
]
LabelValue = Annotated[str, StringConstraints(max_length=63)]
MAX_SELECTOR_TERMS = 32
MAX_CAP_WINDOW = timedelta(days=90)


class LabelSelectorRequirement(ApiModel):
    """One requirement of a label selector, as Kubernetes defines it."""

    key: LabelKey
    """Label key."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """In / NotIn: the label's value among `values`; Exists / DoesNotExist: the key only."""
    values: list[LabelValue] = Field([], max_length=MAX_SELECTOR_TERMS)
    """Values for In and NotIn (at least one); empty for Exists and DoesNotExist."""

    __cel__ = (
        Rule(
            "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
            "a label selector requirement with In or NotIn needs values; Exists and "
            "DoesNotExist take none",
            lambda m: (m.operator in ("In", "NotIn")) == bool(m.values),
        ),
    )


class LabelSelector(ApiModel):
    """Tasks by their labels (Kubernetes label selector); empty: every task."""

    match_labels: dict[str, LabelValue] = Field({}, max_length=MAX_SELECTOR_TERMS)
    """Labels a task must carry, with these values."""
    match_expressions: list[LabelSelectorRequirement] = Field([], max_length=MAX_SELECTOR_TERMS)
    """Further requirements, all of which must hold."""

    __cel__ = (
        Rule(
            f'self.all(k, size(k) <= 316 && k.matches(r"{LABEL_KEY_PATTERN}"))',
            "matchLabels: a key is a label key ([prefix/]name: letters, digits, -, _ and .)",
            lambda m: all(
                len(k) <= 316 and re.fullmatch(LABEL_KEY_PATTERN, k) for k in m.match_labels
            ),
            on="matchLabels",
        ),
    )


def _window(value: Any) -> Any:
    # "24h", "90m", "7d", "1d12h": Go-like, days allowed (a cap is counted in days).
    if isinstance(value, str):
        return parse_duration(value)
    return value


def _window_bounds(value: timedelta) -> timedelta:
    # The CRD's pattern checks the form; the bounds are checked here (CEL has no days),
    # so the operator's validation and `kubectl push validate` report them.
    if not timedelta(minutes=1) <= value <= MAX_CAP_WINDOW:
        raise ValueError("must be between 1m and 90d")
    return value


def parse_duration(text: str) -> timedelta:
    """`1d12h`, `24h`, `90m`, `30s` as a timedelta; ValueError for anything else."""
    parts = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    if not text.strip() or parts is None:
        raise ValueError(f"{text!r} is not a duration such as 24h, 90m or 7d")
    d, h, m, s = (int(g or 0) for g in parts.groups())
    return timedelta(days=d, hours=h, minutes=m, seconds=s)


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"


WindowLength = Annotated[
    timedelta,
    BeforeValidator(_window),
    AfterValidator(_window_bounds),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$",
            "minLength": 2,
            "maxLength": 32,
            "description": "A duration: 24h, 90m, 7d, 1d12h.",
        }
    ),
]


class RecentlySentSource(ApiModel):
    """An exclusion only (a frequency cap across campaigns): the users that runs of the
    tasks matching `selector`, in this namespace, sent anything to in the last `within`,
    read from those runs' ledgers. A run still sending counts with what it has sent so
    far; a run the operator has pruned (PUSHTASK_RUN_RETENTION) no longer counts
    (docs/operations.md, A frequency cap across campaigns)."""

    kind: Literal["recentlySent"]
    within: WindowLength
    """How far back a send counts, from when this run's audience is read: 24h, 7d, 90m
    (at least a minute, at most 90 days)."""
    selector: LabelSelector = LabelSelector()
    """Which tasks' runs count (this task's own earlier runs too, when it matches); empty:
    every task of the namespace."""


Source = Annotated[
    InlineSource | MongoSource | ConfigMapSource | UrlSource | RecentlySentSource,
    Field(discriminator="kind"),
]


class Audience(ApiModel):
    """Who receives the message: the union of `sources` minus the users of `exclude`."""

    shards: int = Field(
        256,
        ge=1,
        le=4096,
        description=(
            "Hash buckets: recipients are hashed into this many buckets; once the audience "
            "is known, buckets are grouped into delivery shards of at most 200,000 "
            "recipients each. 256 buckets hold about 51 million recipients; raise it for more."
        ),
    )
    sources: list[Source] = Field(min_length=1, max_length=64)
    """Where users come from; overlapping sources are deduplicated."""
    exclude: list[Source] = Field([], max_length=64)
    """Users to leave out (the same kinds as sources, and recentlySent: a frequency cap)."""

    __cel__ = (
        Rule(
            "self.sources.all(s, s.kind != 'recentlySent')",
            "spec.audience.sources: recentlySent is an exclusion only (spec.audience.exclude)",
            lambda m: all(s.kind != "recentlySent" for s in m.sources),
            field_path=".sources",
        ),
    )


# --- message --------------------------------------------------------------------------


class HmacSecretRef(SecretRef):
    """The Secret holding the webhook signing secret: a Standard Webhooks `whsec_<base64>`
    value (the key is the decoded bytes) or any other text (the key is its bytes)."""

    key: Name = "hmac"
    """Key in the Secret holding the signing secret."""
    previous_key: Name | None = None
    """Key rotation: a second key of the Secret that also signs every request (standard only)."""

    __cel__ = (
        Rule(
            "!has(self.previousKey) || self.previousKey != self.key",
            "secretRef.previousKey must name another key than key",
            lambda m: m.previous_key is None or m.previous_key != m.key,
            field_path=".previousKey",
        ),
    )


class Webhook(ApiModel):
    """JSON POST per recipient, signed per Standard Webhooks when a secret is given."""

    url: HttpUrl
    """Endpoint (http or https)."""
    secret_ref: HmacSecretRef | None = None
    """Secret with the signing secret; unset: requests are not signed."""
    signature: Literal["standard", "pushtask"] = "standard"
    """standard (Standard Webhooks) or pushtask (X-PushTask-Signature, the earlier scheme)."""
    timeout_seconds: float = Field(10, gt=0, le=300)
    """Per-request timeout."""
    headers: dict[
        str,
        Annotated[
            str, StringConstraints(max_length=MAX_HEADER_VALUE_LENGTH, pattern=HEADER_VALUE_PATTERN)
        ],
    ] = Field({}, max_length=MAX_HEADERS)
    """Extra HTTP headers (names are tokens; values have no CR, LF or other controls)."""

    __cel__ = (
        Rule(
            f'self.all(k, size(k) <= 256 && k.matches(r"{HEADER_NAME_PATTERN}"))',
            "spec.message.webhook.headers: a header name is 1-256 letters, digits or "
            "!#$%&'*+-.^_`|~ (no spaces, colons, CR or LF)",
            lambda m: all(len(k) <= 256 and is_header_name(k) for k in m.headers),
            on="headers",
        ),
        # The pushtask scheme has one signature header, compared whole by its receivers:
        # a second signature would break them, so rotation needs the standard scheme.
        Rule(
            "self.signature == 'standard' || !has(self.secretRef) || "
            "!has(self.secretRef.previousKey)",
            "spec.message.webhook.secretRef.previousKey (key rotation) needs signature: "
            "standard; the pushtask scheme carries one signature",
            lambda m: (
                m.signature == "standard"
                or m.secret_ref is None
                or m.secret_ref.previous_key is None
            ),
            field_path=".secretRef.previousKey",
        ),
    )


class CaSecretRef(SecretRef):
    """A Secret key holding PEM CA certificates to trust beside the system's (a private
    gateway or a test server); unset: the system's trust store alone."""

    key: Name = "ca.crt"
    """Key in the Secret holding the PEM bundle."""


class Smtp(ApiModel):
    """E-mail through an SMTP server."""

    host: Name
    """SMTP server host."""
    port: int | None = Field(None, ge=1, le=65535)
    """SMTP server port; unset: 465 with tls, else 587."""
    tls: bool = False
    """Implicit TLS from the first byte (SMTPS, usually port 465) instead of STARTTLS."""
    starttls: bool = True
    """Upgrade the connection with STARTTLS (ignored with tls)."""
    credentials_secret_ref: SecretRef | None = None
    """Secret with keys username and password; unset: no authentication."""
    from_: Annotated[str, StringConstraints(min_length=3, max_length=320)] = Field(alias="from")
    """Sender address."""
    to_field: FieldName = "email"
    """Recipient attribute holding the address."""
    timeout_seconds: float = Field(30, gt=0, le=300)
    """Per-command timeout."""
    ca_secret_ref: CaSecretRef | None = None
    """Extra CA certificates to trust (a relay with a private CA, a test server)."""

    @property
    def server_port(self) -> int:
        return self.port or (465 if self.tls else 587)


class ServiceAccountSecretRef(SecretRef):
    """A Secret key holding a Google service-account JSON key file."""

    key: Name = "service-account.json"
    """Key in the Secret holding the service-account JSON."""


class Fcm(ApiModel):
    """Firebase Cloud Messaging, HTTP v1 API: one request per device token, OAuth2 access
    tokens made from a service account (docs/channels.md#fcm)."""

    service_account_secret_ref: ServiceAccountSecretRef
    """Secret with the service-account JSON (never inline in the spec)."""
    project_id: (
        Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{3,61}$", max_length=63)] | None
    ) = None
    """Firebase project id; unset: project_id of the service-account JSON."""
    token_attribute: FieldName = "deviceToken"
    """Recipient attribute holding the FCM registration token."""
    endpoint: HttpUrl = "https://fcm.googleapis.com"
    """FCM API base URL (override for a gateway or a test server)."""
    token_uri: HttpUrl | None = None
    """OAuth2 token endpoint; unset: token_uri of the service-account JSON."""
    android_priority: Literal["normal", "high"] | None = None
    """android.priority of every message; unset: FCM's default."""
    ttl_seconds: int | None = Field(None, ge=0, le=2_419_200)
    """android.ttl: how long FCM keeps an undelivered message (at most 28 days)."""
    timeout_seconds: float = Field(10, gt=0, le=300)
    """Per-request timeout."""
    ca_secret_ref: CaSecretRef | None = None
    """Extra CA certificates to trust (a private gateway, a test server)."""


ApnsPushType = Literal[
    "alert",
    "background",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "location",
    "liveactivity",
    "pushtotalk",
    "widgets",
    "controls",
]


class ApnsKeySecretRef(SecretRef):
    """A Secret key holding an APNs auth key (.p8, PEM)."""

    key: Name = "key.p8"
    """Key in the Secret holding the .p8 file's content."""


class Apns(ApiModel):
    """Apple Push Notification service over HTTP/2 with token-based (.p8) auth
    (docs/channels.md#apns)."""

    key_secret_ref: ApnsKeySecretRef
    """Secret with the .p8 auth key (never inline in the spec)."""
    key_id: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{10}$", max_length=10)]
    """The key's 10-character Key ID (Apple Developer account, Keys)."""
    team_id: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{10}$", max_length=10)]
    """The 10-character Team ID the key belongs to."""
    topic: Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^\S+$")]
    """apns-topic: the app's bundle id (with .voip, .complication ... for those types)."""
    push_type: ApnsPushType = "alert"
    """apns-push-type."""
    priority: Literal[1, 5, 10] = 10
    """apns-priority: 10 at once, 5 power-considerate, 1 prioritise device power."""
    expiration_seconds: int | None = Field(None, ge=0, le=2_592_000)
    """apns-expiration in seconds from the send (0: deliver now or never); unset: APNs' default."""
    collapse_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    """apns-collapse-id: notifications with the same id replace each other on the device."""
    environment: Literal["production", "sandbox"] = "production"
    """api.push.apple.com or api.sandbox.push.apple.com."""
    endpoint: HttpUrl | None = None
    """Base URL overriding environment (a gateway or a test server); HTTP/2 over TLS."""
    token_attribute: FieldName = "deviceToken"
    """Recipient attribute holding the APNs device token (hex)."""
    timeout_seconds: float = Field(10, gt=0, le=300)
    """Per-request timeout."""
    ca_secret_ref: CaSecretRef | None = None
    """Extra CA certificates to trust (a private gateway, a test server)."""

    __cel__ = (
        Rule(
            "self.pushType != 'background' || self.priority == 5",
            "spec.message.apns.priority must be 5 for pushType background (APNs refuses 10)",
            lambda m: m.push_type != "background" or m.priority == 5,
            field_path=".priority",
        ),
    )


class Template(ApiModel):
    """Jinja2 templates (sandboxed, strict undefined) rendered per recipient."""

    title: Annotated[str, StringConstraints(max_length=MAX_TITLE_LENGTH)] | None = None
    """Title or e-mail subject."""
    body: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEMPLATE_LENGTH)]
    """Body (at most 64 KiB)."""
    link: Annotated[str, StringConstraints(max_length=MAX_LINK_LENGTH)] | None = None
    """Link (a promotional URL, may use the recipient's attributes)."""
    extra: dict[FieldName, Annotated[str, StringConstraints(max_length=MAX_TEMPLATE_LENGTH)]] = (
        Field({}, max_length=MAX_EXTRA_FIELDS)
    )
    """More templated fields, sent as they are named."""


ConversionWindow = Annotated[str, StringConstraints(pattern=WINDOW_PATTERN, max_length=4)]


class TrackerKeySecretRef(SecretRef):
    """The Secret holding the tracker key that signs tracked links (the same key the
    chart's tracker verifies them with: `tracker.keySecret`)."""

    key: Name = "key"
    """Key in the Secret holding the tracker key."""


class Tracking(ApiModel):
    """spec.message.tracking: what the tracker (`pushtask-tracker`) records of a run: link
    clicks (`links`), and conversions posted to it within `conversionWindow` of the send."""

    links: bool = False
    """Rewrite each link written in the templates into a tracked redirect through the
    tracker, which counts unique clicks (status.clicks, status.clickThrough)."""
    base_url: HttpUrl | None = None
    """The tracker's public URL, as recipients reach it (https://t.example.com)."""
    secret_ref: TrackerKeySecretRef | None = None
    """The Secret holding the tracker key (in the PushTask's namespace)."""
    conversion_window: ConversionWindow = DEFAULT_WINDOW
    """How long after a recipient's send the tracker accepts their conversions
    (POST /v1/conversions): 1-999 minutes, hours or days, such as 30m, 48h or 7d."""

    __cel__ = (
        Rule(
            "!self.links || has(self.baseUrl)",
            "spec.message.tracking.links needs baseUrl (the tracker's public URL)",
            lambda m: not m.links or m.base_url is not None,
            field_path=".baseUrl",
            reason="FieldValueRequired",
        ),
        Rule(
            "!self.links || has(self.secretRef)",
            "spec.message.tracking.links needs secretRef (the Secret key that signs links)",
            lambda m: not m.links or m.secret_ref is not None,
            field_path=".secretRef",
            reason="FieldValueRequired",
        ),
    )


# Channels whose settings have a model of their own here (a plugin's are free-form).
BUILTIN_CHANNELS = ("webhook", "smtp", "fcm", "apns")


def _settings_required(channel: str) -> Rule:
    """A built-in channel needs its settings block (spec.message.<channel>)."""
    return Rule(
        f"self.channel != '{channel}' || has(self.{channel})",
        f"spec.message.{channel} is required when spec.message.channel is {channel}",
        lambda m: m.channel != channel or getattr(m, channel) is not None,
        field_path=f".{channel}",
        reason="FieldValueRequired",
    )


class Message(ApiModel):
    """What is sent, and through which channel."""

    channel: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]*$", max_length=63)] = (
        "webhook"
    )
    """webhook, smtp, fcm, apns, or the name of a channel plugin."""
    webhook: Webhook | None = None
    """Settings of the webhook channel."""
    smtp: Smtp | None = None
    """Settings of the smtp channel."""
    fcm: Fcm | None = None
    """Settings of the fcm channel (Firebase Cloud Messaging HTTP v1)."""
    apns: Apns | None = None
    """Settings of the apns channel (Apple Push Notification service)."""
    settings: Annotated[dict[str, Any], Field(max_length=MAX_SETTINGS)] | None = None
    """Settings of a plugin channel (free-form)."""
    template: Template
    """The message templates."""
    tracking: Tracking | None = None
    """Link click tracking through the tracker (off when unset)."""

    __cel__ = tuple(_settings_required(channel) for channel in BUILTIN_CHANNELS)


# --- delivery, rate, schedule ---------------------------------------------------------


class Guarantee(StrEnum):
    """What happens to a recipient left in doubt by a lost worker."""

    AT_MOST_ONCE = "AtMostOnce"
    AT_LEAST_ONCE = "AtLeastOnce"


class BackoffPolicy(ApiModel):
    """spec.delivery.backoff: exponential backoff between attempts (a server's Retry-After
    wins). The worker's `resilience.Backoff` computes the delays from it."""

    initial_seconds: float = Field(1, gt=0, le=3600)
    """First delay."""
    max_seconds: float = Field(60, gt=0, le=86400)
    """Longest delay."""
    multiplier: float = Field(2, ge=1, le=10)
    """Growth per attempt."""

    __cel__ = (
        Rule(
            "self.maxSeconds >= self.initialSeconds",
            "spec.delivery.backoff.maxSeconds must not be less than initialSeconds",
            lambda m: m.max_seconds >= m.initial_seconds,
            field_path=".maxSeconds",
        ),
    )


class FailureThreshold(ApiModel):
    """The error budget: the run fails when failed/attempted exceeds `ratio`."""

    ratio: float = Field(0.5, gt=0, le=1)
    """Failed share of attempted sends that fails the run."""
    min_sample: int = Field(100, ge=1, le=1_000_000_000)
    """Sends attempted before the ratio is judged."""


class DeliveryPolicy(ApiModel):
    """spec.delivery: retries, error budget and the in-doubt rule (one send to one user is
    the worker's `channels.Delivery`)."""

    guarantee: Guarantee = Guarantee.AT_MOST_ONCE
    """AtMostOnce: a recipient in doubt becomes unknown; AtLeastOnce: it is sent again."""
    max_attempts: int = Field(3, ge=1, le=20)
    """Attempts per recipient (retryable errors only; 4xx is final)."""
    backoff: BackoffPolicy = Field(
        default_factory=BackoffPolicy, json_schema_extra=_default_of(BackoffPolicy)
    )
    """Delay between attempts."""
    failure_threshold: FailureThreshold = Field(
        default_factory=FailureThreshold, json_schema_extra=_default_of(FailureThreshold)
    )
    """Error budget."""


class Rate(ApiModel):
    """Send rate of the whole task, shared equally by its live workers."""

    per_second: float = Field(100, gt=0, le=1_000_000)
    """Sends per second across all workers."""


class Weekday(StrEnum):
    MON = "Mon"
    TUE = "Tue"
    WED = "Wed"
    THU = "Thu"
    FRI = "Fri"
    SAT = "Sat"
    SUN = "Sun"


Time = Annotated[str, StringConstraints(pattern=HHMM_PATTERN, max_length=5)]


class Window(ApiModel):
    """A daily send window; `to` before `from` crosses midnight (22:00-02:00)."""

    days: list[Weekday] = Field(
        default_factory=lambda: [Weekday(d) for d in WEEKDAYS],
        min_length=1,
        max_length=7,
        json_schema_extra={"default": list(WEEKDAYS), "x-kubernetes-list-type": "set"},
    )
    """Days on which the window opens (a window crossing midnight runs into the next day)."""
    from_: Time = Field(alias="from")
    """Opening time, HH:MM (00:00-23:59)."""
    to: Time
    """Closing time, HH:MM (00:00-23:59), exclusive."""
    time_zone: TimeZone | None = None
    """IANA time zone; unset: spec.schedule.timeZone."""

    __cel__ = (
        Rule(
            "self.to != self.from",
            "spec.schedule.windows[].to must differ from from",
            lambda m: m.to != m.from_,
            field_path=".to",
        ),
        _tz_rule("spec.schedule.windows[].timeZone", "time_zone"),
    )

    @field_validator("days")
    @classmethod
    def _unique_days(cls, days: list[Weekday]) -> list[Weekday]:
        # The CRD declares a set (the API server rejects duplicates the same way).
        if len(set(days)) != len(days):
            raise ValueError("spec.schedule.windows[].days must not repeat a day")
        return days


class Schedule(ApiModel):
    """When to send: a start time, send windows, or a cron schedule of runs."""

    start_at: (
        Annotated[
            AwareDatetime,
            Field(json_schema_extra={"maxLength": 64, "pattern": DATE_TIME_OFFSET_PATTERN}),
        ]
        | None
    ) = None
    """Do not start before this time (RFC 3339, offset within ±14:00)."""
    windows: list[Window] = Field([], max_length=32)
    """Send only inside these windows; outside them workers hold. Empty: any time."""
    cron: Annotated[str, StringConstraints(max_length=128)] | None = None
    """Recurring runs (5-field cron, or @daily etc.): each firing is a new run; no overlap."""
    time_zone: TimeZone = "UTC"
    """IANA time zone of the cron schedule and of windows without their own."""

    @field_validator("start_at")
    @classmethod
    def _offset_in_range(cls, value: datetime | None) -> datetime | None:
        # The CRD's twin is DATE_TIME_OFFSET_PATTERN on the string.
        if value is not None and not offset_in_range(value):
            raise ValueError("spec.schedule.startAt must have a UTC offset within ±14:00")
        return value

    __cel__ = (
        Rule(
            f"self.matches({CRON_PATTERN!r})",
            "spec.schedule.cron must be a 5-field cron expression such as '0 9 * * Mon-Fri'",
            lambda m: m.cron is None or is_valid_cron(m.cron),
            on="cron",
        ),
        _tz_rule("spec.schedule.timeZone", "time_zone"),
    )


# --- notify ---------------------------------------------------------------------------

# The phases a notification can report: the ends of a run, and a pause the person did not
# ask for (a degraded tier; a spent failure budget fails the run: Failed).
NotifyPhase = Literal["Finished", "Failed", "Paused", "Stopped"]
NOTIFY_PHASES: tuple[NotifyPhase, ...] = ("Finished", "Failed", "Paused", "Stopped")
MAX_NOTIFY = 16
MAX_NOTIFY_ADDRESSES = 50
EmailAddress = Annotated[
    str, StringConstraints(min_length=3, max_length=320, pattern=r"^[^@\s<>]+@[^@\s<>]+$")
]


class NotifyWebhook(ApiModel):
    """A JSON POST per notification, signed per Standard Webhooks as the webhook channel
    signs (webhook-id is the notification's id: the same on every attempt)."""

    url: HttpUrl
    """Endpoint (http or https)."""
    secret_ref: HmacSecretRef | None = None
    """Secret with the signing secret (whsec_<base64> or any text); unset: not signed."""
    timeout_seconds: float = Field(10, gt=0, le=300)
    """Per-request timeout."""


class NotifyEmail(ApiModel):
    """A plain-text e-mail per notification, sent through spec.message.smtp's server."""

    to: list[EmailAddress] = Field(min_length=1, max_length=MAX_NOTIFY_ADDRESSES)
    """Recipient addresses."""


class Notification(ApiModel):
    """Where to report a run's phase changes: exactly one of webhook or email."""

    webhook: NotifyWebhook | None = None
    """A webhook endpoint."""
    email: NotifyEmail | None = None
    """E-mail addresses (through spec.message.smtp)."""
    phases: list[NotifyPhase] = Field(
        default_factory=lambda: list(NOTIFY_PHASES),
        min_length=1,
        max_length=len(NOTIFY_PHASES),
        json_schema_extra={"default": list(NOTIFY_PHASES), "x-kubernetes-list-type": "set"},
    )
    """Phases to report: Finished, Failed, Stopped, and Paused when not asked for by a person
    (a degraded tier). One notification per phase change per run."""

    __cel__ = (
        Rule(
            "has(self.webhook) != has(self.email)",
            "spec.notify[]: give exactly one of webhook or email",
            lambda m: (m.webhook is None) != (m.email is None),
        ),
    )

    @field_validator("phases")
    @classmethod
    def _unique_phases(cls, phases: list[str]) -> list[str]:
        # The CRD declares a set (the API server rejects duplicates the same way).
        if len(set(phases)) != len(phases):
            raise ValueError("spec.notify[].phases must not repeat a phase")
        return phases


# --- spec -----------------------------------------------------------------------------

RUN_RULE = Rule(
    "self >= oldSelf",
    "spec.run must not decrease: raise it to start a new run",
    None,
    on="run",
)


class PushTaskSpec(ApiModel):
    """Desired state of a PushTask."""

    run: int = Field(1, ge=1, le=1_000_000_000)
    """Names the run; raising it starts a fresh run (counters reset). Never decreases."""
    state: DesiredState = DesiredState.STARTED
    """Started, Paused (resume later: same run) or Stopped (the run is over)."""
    workers: int = Field(1, ge=1, le=1000)
    """Worker pods (the scale subresource drives this)."""
    priority: int = Field(500, ge=0, le=1000)
    """Higher is more important; operator settings map ranges to tiers degraded at peaks."""
    rate: Rate = Field(default_factory=Rate, json_schema_extra=_default_of(Rate))
    """Send rate."""
    audience: Audience
    """Who receives the message."""
    message: Message
    """What is sent."""
    delivery: DeliveryPolicy = Field(
        default_factory=DeliveryPolicy, json_schema_extra=_default_of(DeliveryPolicy)
    )
    """Retries and guarantees."""
    schedule: Schedule = Field(default_factory=Schedule, json_schema_extra=_default_of(Schedule))
    """When to send."""
    notify: list[Notification] = Field([], max_length=MAX_NOTIFY)
    """Completion notifications: webhooks and e-mail addresses told of a run's end (or
    of a pause nobody asked for), with its counts and top failure reasons."""

    __cel__ = (
        RUN_RULE,
        Rule(
            "!has(self.notify) || self.notify.all(n, !has(n.email)) || has(self.message.smtp)",
            "spec.notify[].email needs spec.message.smtp: notifications are mailed through "
            "the task's SMTP server",
            # notify first: read_spec's partial spec (live fields only) has no message.
            lambda m: all(n.email is None for n in m.notify) or m.message.smtp is not None,
            field_path=".notify",
        ),
    )


_SOURCE_KINDS = frozenset({"inline", "mongo", "configMap", "url"})


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a Kubernetes field path: ("a", 0, "b") -> "a[0].b"."""
    out = ""
    previous: int | str = ""
    for part in loc:
        after_index, previous = isinstance(previous, int), part
        if isinstance(part, int):
            out += f"[{part}]"
        elif (after_index and part in _SOURCE_KINDS) or "[" in part:
            continue  # a source's kind (the union's tag) or a validator's name: not a field
        else:
            out += f".{part}" if out else part
    return out


def describe_errors(error: ValidationError, prefix: str = "") -> list[str]:
    """Each error of a spec as "spec.audience.sources[0].collection: Field required"."""
    lines = []
    for e in error.errors():
        path = ".".join(p for p in (prefix, field_path(tuple(e["loc"]))) if p)
        message = e["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}" if path else message)
    return lines


def validate_update(old: PushTaskSpec, new: PushTaskSpec) -> None:
    """The transition rules (CEL `oldSelf`) for an update from `old` to `new`."""
    if new.run < old.run:
        raise ValueError(RUN_RULE.message)


# --- status (written only by the operator) --------------------------------------------


class StatusModel(BaseModel):
    """Base of status models: tolerant on read (whatever the server holds parses)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )


class Counts(StatusModel):
    """Recipients by result; at the end sent + failed + unknown + skipped == audience
    (excluded and duplicates are users and rows left out of the audience)."""

    audience: int = 0
    """Recipients found plus skipped source rows."""
    pending: int = 0
    """Not yet sent."""
    sent: int = 0
    """Delivered."""
    failed: int = 0
    """Failed for good (4xx, or attempts exhausted)."""
    skipped: int = 0
    """Bad source rows, with reasons in skipSamples."""
    unknown: int = 0
    """In doubt after a lost worker (AtMostOnce): never sent again."""
    excluded: int = 0
    """Users removed by audience.exclude (opt-out lists and frequency caps together),
    counted as the audience is sealed; not part of audience."""
    duplicates: int = 0
    """Source rows of a user already found (overlapping sources, repeated rows): each
    user is sent to once; not part of audience."""


class WorkerCounts(StatusModel):
    """Worker pods."""

    desired: int = 0
    """Replicas asked for (0 when the phase scales to zero)."""
    ready: int = 0
    """Ready pods of the Deployment."""
    live: int = 0
    """Workers with a fresh heartbeat in MongoDB."""


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """A Kubernetes condition."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=316)]
    """Condition type (Ready among them)."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str | None = None
    """CamelCase reason."""
    message: str | None = None
    """Human-readable detail."""
    last_transition_time: AwareDatetime | None = None
    """When status last changed."""
    observed_generation: int | None = None
    """metadata.generation this condition was computed from."""


class ConversionCount(StatusModel):
    """One conversion event of a run."""

    event: str
    """The event's name, as posted to the tracker."""
    count: int = 0
    """Recipients who converted (each counted once per event)."""
    rate: str = "0.0%"
    """count / sent, as a percentage ("1.2%")."""


class PushTaskStatus(StatusModel):
    """Observed state of a PushTask (one writer: the operator)."""

    phase: Phase | None = None
    """Ready, Started, Paused, Stopped, Finished, Failed or Reboot."""
    run: int | None = None
    """The run this status describes."""
    run_id: str | None = None
    """The run's id in MongoDB."""
    observed_generation: int | None = None
    """metadata.generation last reconciled."""
    counts: Counts | None = None
    """Recipients by result."""
    rate: float | None = None
    """Current sends per second."""
    eta: str | None = None
    """Estimated time to finish."""
    workers: WorkerCounts | None = None
    """Worker pods."""
    replicas: int | None = None
    """Current worker replicas (scale subresource)."""
    selector: str | None = None
    """Label selector of the worker pods (scale subresource, HPA)."""
    conditions: list[Condition] = Field(
        [],
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    """Conditions by type: Ready, Reconciling, Stalled, Complete and more (docs/gitops.md)."""
    message: str | None = None
    """Human-readable detail of the phase."""
    reason: str | None = None
    """CamelCase reason of the last transition."""
    started_at: AwareDatetime | None = None
    """When the run started."""
    finished_at: AwareDatetime | None = None
    """When the run ended."""
    skip_samples: list[str] = []
    """A few skipped source rows with their reasons."""
    last_fired_at: AwareDatetime | None = None
    """Last cron firing that started a run."""
    last_skipped_at: AwareDatetime | None = None
    """Last cron firing skipped because a run was still under way (an Event says so)."""
    clicks: int | None = None
    """Tracked links clicked: unique (recipient, link) pairs (spec.message.tracking.links)."""
    clickers: int | None = None
    """Recipients who clicked at least one tracked link."""
    click_through: str | None = None
    """clickers / sent, as a percentage ("2.5%")."""
    conversions: (
        Annotated[
            list[ConversionCount],
            Field(
                json_schema_extra={
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["event"],
                }
            ),
        ]
        | None
    ) = None
    """Conversions by event name (spec.message.tracking): recipients and rate per sent."""


class PushTask(BaseModel):
    """A whole PushTask manifest, as `kubectl push` reads it."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    api_version: Literal["pushtask.dev/v1alpha1"] = Field(
        "pushtask.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["PushTask"] = "PushTask"
    metadata: dict[str, Any] = {}
    spec: PushTaskSpec
    status: PushTaskStatus | None = None


__all__ = [
    "API_VERSION",
    "BUILTIN_CHANNELS",
    "CATEGORIES",
    "GROUP",
    "KIND",
    "NOTIFY_PHASES",
    "PLURAL",
    "SHORT_NAMES",
    "SINGULAR",
    "VERSION",
    "Apns",
    "ApnsKeySecretRef",
    "Audience",
    "BackoffPolicy",
    "CaSecretRef",
    "Condition",
    "ConditionStatus",
    "ConfigMapSource",
    "ConversionCount",
    "Counts",
    "DeliveryPolicy",
    "DesiredState",
    "FailureThreshold",
    "Fcm",
    "Guarantee",
    "HmacSecretRef",
    "InlineSource",
    "InlineUser",
    "Message",
    "MongoSecretRef",
    "MongoSource",
    "Notification",
    "NotifyEmail",
    "NotifyPhase",
    "NotifyWebhook",
    "Phase",
    "PushTask",
    "PushTaskSpec",
    "PushTaskStatus",
    "Rate",
    "Rule",
    "Schedule",
    "SecretRef",
    "ServiceAccountSecretRef",
    "Smtp",
    "Source",
    "Template",
    "TrackerKeySecretRef",
    "Tracking",
    "UrlSource",
    "Webhook",
    "Weekday",
    "Window",
    "WorkerCounts",
    "describe_errors",
    "field_path",
    "validate_update",
]
