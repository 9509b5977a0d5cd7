"""The channel plugin interface.

A channel sends one rendered message to one user and says how the attempt went; the
worker owns everything around it (rate limit, retries with back-off, results, metrics).
Channels are found through the ``pushtask.channels`` entry-point group, so a package that
declares

    [project.entry-points."pushtask.channels"]
    pigeon = "my_pkg.pigeon:PigeonChannel"

adds ``message.channel: pigeon`` without forking PushTask (see docs/channels.md).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

GROUP = "pushtask.channels"
M = TypeVar("M", bound=BaseModel)


class Outcome(enum.Enum):
    OK = "ok"  # delivered (2xx, 250 ...)
    RETRY = "retry"  # transient: try again after a back-off (429, 5xx, timeouts, 4xx SMTP)
    FINAL = "final"  # permanent: never retried (other 4xx, 5xx SMTP)
    # The receiver itself is gone (a webhook's 410): every later send would fail the same
    # way, so this recipient fails and the run stops, with `detail` as the run's reason.
    GONE = "gone"


@dataclass(frozen=True)
class Delivery:
    """One message to one user."""

    task: Mapping[str, Any]  # {namespace, name, uid}
    run: int
    run_id: str
    user: str
    message: Mapping[str, Any]  # the rendered template fields
    attrs: Mapping[str, Any]  # the recipient's row attributes (e.g. an e-mail address)
    idempotency_key: str  # sha256("<task uid>:<run>:<user>"), the same on every attempt
    attempt: int = 1
    # A test send (`kubectl push test`): outside any run's ledger, and its key never equals
    # a real send's. Channels mark it where a receiver can see it (docs/channels.md), so
    # the receiver can show it as a test or drop it; a plugin should do the same.
    test: bool = False


@dataclass(frozen=True)
class Attempt:
    outcome: Outcome
    detail: str = ""
    retry_after: float | None = None  # seconds the receiver asked us to wait
    status: int | None = None  # HTTP status or SMTP reply code, when there was one

    @classmethod
    def ok(cls, status: int | None = None) -> Attempt:
        return cls(Outcome.OK, status=status)


@dataclass
class ChannelContext:
    """What the worker gives a channel: its settings from the frozen spec and secrets.

    A built-in channel's settings are its spec model (``message.webhook`` ...), read with
    :meth:`settings_as`; a plugin's are the plain mapping of ``message.settings``.
    """

    settings: Mapping[str, Any] | BaseModel
    # Secrets arrive through the environment (the operator maps Secret keys to env vars):
    # channels read them with ``secret("NAME")`` → env ``PUSHTASK_<NAME>``.
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    concurrency: int = 32

    def settings_as(self, model: type[M]) -> M:
        """The settings as `model`: the defaults live only in the model, and a key it does
        not have is never read. A mapping (a test, a caller outside the worker) is
        validated into it, with the spec's own error messages."""
        if isinstance(self.settings, model):
            return self.settings
        if isinstance(self.settings, BaseModel):
            return model.model_validate(self.settings.model_dump(by_alias=True))
        return model.model_validate(self.settings)

    def secret(self, name: str, default: str | None = None) -> str | None:
        return self.env.get(f"PUSHTASK_{name}", default)


class Channel:
    """Base class of channels. Subclasses set ``name`` and implement :meth:`send`.

    ``send`` may raise: any exception counts as a transient failure of that attempt
    (the worker retries it within ``delivery.maxAttempts``).
    """

    name: ClassVar[str] = ""

    def __init__(self, ctx: ChannelContext) -> None:
        self.ctx = ctx

    @property
    def max_concurrency(self) -> int:
        """How many sends the worker may run at once on this channel."""
        return self.ctx.concurrency

    async def start(self) -> None:
        """Open connections (called once, before the first send)."""

    async def send(self, delivery: Delivery) -> Attempt:
        raise NotImplementedError

    async def close(self) -> None:
        """Close connections (called once, on shutdown)."""

    async def __aenter__(self) -> Channel:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class UnknownChannel(LookupError):
    pass


def available() -> dict[str, str]:
    """Channel name → ``module:Class`` of every installed plugin."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def load_channel(name: str) -> type[Channel]:
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Channel)):
                raise TypeError(f"entry point {GROUP}:{name} is not a Channel subclass: {cls!r}")
            return cls
    raise UnknownChannel(f"no channel {name!r}; installed: {sorted(available())}")
