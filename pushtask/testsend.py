"""A test send (`kubectl push test`): what the people's tools hand the one-shot pod, and
what the pod answers, in one place for both sides.

The tools put a `TestSend` in the pod's environment (`ENV`, base64 of JSON); the pod's
`pushtask-worker test-send` renders the task's message for each recipient, sends it
through the task's channel marked as a test, and prints one `Outcome` per recipient as a
JSON line on stdout, among its logs. No store is involved on either side: a test send is
in no run's ledger and no counter.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import ValidationError

from pushtask.models import GROUP, PushTaskSpec, describe_errors
from pushtask.templates import TemplateError, build_context, compile_message, render

ENV = "PUSHTASK_TEST_SEND"  # the request in the pod's environment (TestSend.encode)
COMMAND = ("pushtask-worker", "test-send")
# The pod's labels: not the workers' app name (no selector, PodMonitor or alert of the
# workers counts it), and a label of its own to find test pods by.
APP = "pushtask-test-send"
LABEL = f"{GROUP}/test-send"
# How long the pod may take in all (the kubelet ends it after this) and the bounds of a
# test's retries: a test answers in seconds, it does not wait out a run's long back-off.
DEADLINE_SECONDS = 120
MAX_ATTEMPTS = 3
MAX_BACKOFF_SECONDS = 5.0
# A test is for a few people: a long list would be a run without its ledger (nothing would
# keep a user from getting it twice), and it must fit the pod's deadline.
MAX_RECIPIENTS = 20
# The request must fit one environment variable (Linux takes at most 128 KiB per string).
MAX_REQUEST_BYTES = 120_000
# Each outcome line carries this key, so it stands out among the pod's JSON logs.
KIND_KEY = "pushtaskTestSend"
# A task that never ran has no worker Deployment to copy the pod from: the tools ask the
# operator for the workers' pod template by setting this annotation on the task (a fresh
# nonce each time), and the operator answers with a PodTemplate named like the worker
# Deployment, its ANSWERS annotation holding that nonce. Not under GROUP: kopf keeps its
# own annotations there and leaves them out of the changes it reacts to.
TEMPLATE_REQUEST = f"test.{GROUP}/template-request"
TEMPLATE_ANSWERS = f"test.{GROUP}/template-answers"
# How long the tools wait for that answer (the operator reacts at once; a busy one works
# through its queue first). The operator stops retrying an answer after this long too:
# nobody waits for it any more.
TEMPLATE_WAIT_SECONDS = 30.0


def idempotency_key(nonce: str, user: str) -> str:
    """A test send's key: never a real send's, sha256("<task uid>:<run>:<user>") (a uid
    never starts with "test:"), and a fresh one per test (`nonce`), so a receiver that
    drops repeats does not drop the second test of the same user."""
    return hashlib.sha256(f"test:{nonce}:{user}".encode()).hexdigest()


@dataclass(frozen=True)
class Recipient:
    user: str
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TestSend:
    """What the pod needs: the task, its spec as the PushTask holds it now (JSON form),
    the recipients, and the test's nonce (its keys and its pod's name)."""

    __test__ = False  # not a pytest class, whatever its name

    task: dict[str, Any]  # {namespace, name, uid}
    spec: dict[str, Any]
    recipients: list[Recipient]
    nonce: str

    def encode(self) -> str:
        """The environment variable's value: base64 of the JSON. The API server and the
        kubelet expand `$(NAME)` in an env value with the variables before it, the channel's
        Secrets among them: a message or an attribute holding `$(PUSHTASK_WEBHOOK_SECRET)`
        would be sent with the secret in it. Base64 holds no `$`."""
        text = json.dumps(asdict(self), separators=(",", ":"))
        return base64.b64encode(text.encode()).decode("ascii")

    @classmethod
    def decode(cls, value: str) -> TestSend:
        """Raises ValueError (binascii.Error, json.JSONDecodeError), KeyError or TypeError."""
        doc = json.loads(base64.b64decode(value, validate=True))
        recipients = [
            Recipient(str(r["user"]), dict(r.get("attrs") or {})) for r in doc["recipients"]
        ]
        return cls(dict(doc["task"]), dict(doc["spec"]), recipients, str(doc["nonce"]))


@dataclass(frozen=True)
class Outcome:
    """One recipient's result: `sent`, or `failed` with the channel's last answer."""

    user: str
    outcome: str  # "sent" | "failed"
    attempts: int = 0
    status: int | None = None  # the last HTTP status or SMTP reply code, if any
    detail: str = ""

    @property
    def delivered(self) -> bool:
        return self.outcome == "sent"

    def line(self) -> str:
        return json.dumps({KIND_KEY: 1, **asdict(self)}, separators=(",", ":"))


def outcomes(log: str) -> list[Outcome]:
    """The outcome lines of a test pod's log (its other lines are logs, left out)."""
    found: list[Outcome] = []
    for text in log.splitlines():
        text = text.strip()
        if not text.startswith("{") or KIND_KEY not in text:
            continue
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            continue
        if not isinstance(doc, dict) or doc.pop(KIND_KEY, None) != 1:
            continue
        found.append(
            Outcome(
                user=str(doc.get("user")),
                outcome=str(doc.get("outcome")),
                attempts=int(doc.get("attempts") or 0),
                status=doc.get("status"),
                detail=str(doc.get("detail") or ""),
            )
        )
    return found


def recipients_from(users: Iterable[str], attrs: Any) -> list[Recipient]:
    """The recipients of `--to` with the attributes of `--attrs`: an object gives its
    attributes to every recipient; a list of `{id, ...attributes}` (as an inline audience
    lists users) gives each its own. Raises ValueError for anything else."""
    users = list(dict.fromkeys(u.strip() for u in users if u.strip()))
    if not users:
        raise ValueError("--to names no user")
    if len(users) > MAX_RECIPIENTS:
        raise ValueError(
            f"--to names {len(users)} users; a test goes to at most {MAX_RECIPIENTS} "
            "(a run sends to an audience)"
        )
    if attrs is None:
        return [Recipient(u) for u in users]
    if isinstance(attrs, Mapping):
        return [Recipient(u, dict(attrs)) for u in users]
    if isinstance(attrs, list):
        rows: dict[str, dict[str, Any]] = {}
        for i, row in enumerate(attrs):
            if not isinstance(row, Mapping) or not isinstance(row.get("id"), str):
                raise ValueError(f"attrs[{i}]: each row is an object with a string `id`")
            rows[row["id"]] = {k: v for k, v in row.items() if k != "id"}
        unknown = sorted(set(rows) - set(users))
        if unknown:
            raise ValueError(f"attrs names users not in --to: {', '.join(unknown)}")
        return [Recipient(u, rows.get(u, {})) for u in users]
    raise ValueError("attrs must be an object (for every recipient) or a list of {id, ...}")


def problems(
    task: Mapping[str, Any], spec: Mapping[str, Any], recipients: list[Recipient]
) -> list[str]:
    """Why the message cannot be sent to these recipients, checked before any pod is made:
    the spec's own checks, then the template compiled and rendered for each recipient as
    a worker renders it. Each line names the field, as `kubectl push validate` does."""
    try:
        model = PushTaskSpec.model_validate(dict(spec))
    except ValidationError as error:
        return describe_errors(error, "spec")
    try:
        compiled = compile_message(model.message.template)
    except TemplateError as error:
        return [f"spec.message.{error}"]
    found: list[str] = []
    for r in recipients:
        context = build_context(r.user, r.attrs, task=task, run=model.run)
        try:
            render(compiled, context)
        except TemplateError as error:
            found.append(f"spec.message.{error} (user {r.user})")
    return found
