"""One recipient, one message: render, wait for a rate token, send, retry what is transient.

Every attempt carries the same idempotency key (task uid, run, user), so a receiver can
drop a repeat; every attempt spends a rate token, because the receiver sees each one.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pushtask import testsend
from pushtask.models import BUILTIN_CHANNELS, PushTaskSpec
from pushtask.planning import idempotency_key
from pushtask.records import HANDED_BACK, Result
from pushtask.templates import (
    CompiledMessage,
    TemplateRenderError,
    bind_run,
    build_context,
    render,
)
from pushtask.tracking import LinkRewriter
from pushtask_worker import metrics
from pushtask_worker.channels import (
    Attempt,
    Channel,
    ChannelContext,
    Delivery,
    Outcome,
    load_channel,
)
from pushtask_worker.ratelimit import Limiter
from pushtask_worker.resilience import Backoff


def make_channel(
    spec: PushTaskSpec, concurrency: int, env: Mapping[str, str] | None = None
) -> Channel:
    """The spec's channel with its settings and secrets (`env`, default the process's): a
    built-in channel gets its settings model, a plugin the plain mapping. Raises
    UnknownChannel, or what the channel raises about its settings or secrets (ValueError,
    ValidationError, TypeError)."""
    channel_cls = load_channel(spec.message.channel)
    m = spec.message
    builtin = getattr(m, m.channel, None) if m.channel in BUILTIN_CHANNELS else None
    settings = builtin if builtin is not None else dict(m.settings or {})
    secrets = dict(os.environ if env is None else env)
    return channel_cls(ChannelContext(settings, env=secrets, concurrency=concurrency))


@dataclass
class Sender:
    """What sending needs, fixed for a run (the bucket's rate changes live)."""

    task: Mapping[str, Any]  # {namespace, name, uid}
    run: int
    run_id: str
    spec: PushTaskSpec
    compiled: CompiledMessage
    channel: Channel
    bucket: Limiter
    # Set when the worker shuts down (SIGTERM): no further retries; the recipient is handed
    # back pending, for whoever holds the shard next, with the same idempotency key.
    stopping: asyncio.Event | None = None
    # Called once, by the first send whose channel said the receiver is gone
    # (Outcome.GONE, a webhook's 410): the worker fails the run with the reason.
    on_gone: Callable[[str], Awaitable[None]] | None = None
    # Set for a test send (`pushtask-worker test-send`): every Delivery is marked a test
    # and keyed by testsend.idempotency_key(nonce, user), never by the run's key.
    test_nonce: str | None = None
    # spec.message.tracking.links: each link of the templates becomes the recipient's own
    # tracked redirect, after rendering (so what the channel sends is what is clicked).
    links: LinkRewriter | None = None

    def __post_init__(self) -> None:
        self.gone: str | None = None  # the reason, once a channel said the receiver is gone
        self.label = f"{self.task['namespace']}/{self.task['name']}"
        channel = self.channel.name or self.spec.message.channel
        # The metric child once, not a labels() lookup per attempt.
        self.latency = metrics.SEND_LATENCY.labels(self.label, channel)
        self.failures = {
            r: metrics.SEND_FAILURES.labels(self.label, channel, r)
            for r in ("template", "rejected", "exhausted")
        }
        # Fields that only name the task or the run: rendered once here, not per recipient.
        self.compiled = bind_run(self.compiled, task=self.task, run=self.run)

    def backoff(self) -> Backoff:
        b = self.spec.delivery.backoff
        return Backoff(initial=b.initial_seconds, maximum=b.max_seconds, multiplier=b.multiplier)

    async def send(
        self, position: int, user: str, attrs: Mapping[str, Any], *, token_taken: bool = False
    ) -> Result:
        """The final result of one recipient (never raises for a recipient's own fault).
        `token_taken`: the caller already holds the first attempt's rate token."""
        try:
            message = render(
                self.compiled, build_context(user, attrs, task=self.task, run=self.run)
            )
        except TemplateRenderError as error:
            self.failures["template"].inc()
            return Result(position, "failed", str(error)[:500], 0)
        if self.links is not None:
            message = self.links.rewrite(message, user)
        delivery = Delivery(
            task=self.task,
            run=self.run,
            run_id=self.run_id,
            user=user,
            message=message,
            attrs=attrs,
            idempotency_key=(
                idempotency_key(str(self.task["uid"]), self.run, user)
                if self.test_nonce is None
                else testsend.idempotency_key(self.test_nonce, user)
            ),
            test=self.test_nonce is not None,
        )
        attempts = self.spec.delivery.max_attempts
        backoff: Backoff | None = None  # made only when a retry needs it
        for attempt in range(1, attempts + 1):
            if self.gone is not None:  # nothing more goes out once the receiver is gone
                detail = f"handed back: {self.gone}"
                return Result(position, HANDED_BACK, detail[:500], attempt - 1)
            if attempt > 1 or not token_taken:
                await self.bucket.acquire()
            started = time.monotonic()
            try:
                result = await self.channel.send(
                    delivery if attempt == 1 else replace(delivery, attempt=attempt)
                )
            except Exception as error:  # a plugin's bug is a failed attempt, not a dead worker
                result = Attempt(Outcome.RETRY, f"{type(error).__name__}: {error}"[:300])
            self.latency.observe(time.monotonic() - started)
            if result.outcome is Outcome.OK:
                return Result(position, "sent", None, attempt)
            if result.outcome is Outcome.FINAL:
                self.failures["rejected"].inc()
                return Result(position, "failed", result.detail or "rejected", attempt)
            if result.outcome is Outcome.GONE:
                self.failures["rejected"].inc()
                reason = result.detail or "the receiver is gone"
                if self.gone is None:
                    self.gone = reason
                    if self.on_gone is not None:
                        await self.on_gone(reason)
                return Result(position, "failed", reason[:500], attempt)
            if attempt == attempts:
                self.failures["exhausted"].inc()
                detail = f"gave up after {attempts} attempts: {result.detail}"
                return Result(position, "failed", detail, attempt)
            backoff = backoff or self.backoff()
            if await self._stopped_within(backoff.retry_delay(attempt, result.retry_after)):
                detail = f"handed back at shutdown after attempt {attempt}: {result.detail}"
                return Result(position, HANDED_BACK, detail[:500], attempt)
        raise AssertionError("unreachable")

    async def _stopped_within(self, seconds: float) -> bool:
        """Sleep out a back-off; True if the worker began shutting down meanwhile (a long
        back-off must not outlast the pod's grace period)."""
        if self.stopping is None:
            await asyncio.sleep(seconds)
            return False
        try:
            # asyncio.timeout, not wait_for: a lane cancelled here (an immediate degrade)
            # must stay cancelled even if the worker began stopping at the same moment.
            async with asyncio.timeout(seconds):
                await self.stopping.wait()
        except TimeoutError:
            return False
        return True
