"""`pushtask-worker test-send`: one test of a task's message, in a pod like its workers'.

The request (pushtask.testsend.TestSend) arrives in the environment; the task's channel is
made from the spec and its secrets (the pod's environment, as a worker's), and each
recipient is rendered and sent once, as a worker would (the same Sender, the channel's
retries within tighter bounds), marked as a test. One outcome line per recipient on
stdout. No store: no MongoDB URI is given, none is opened, no ledger or counter is written.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Mapping

from pydantic import ValidationError

from pushtask import testsend
from pushtask.models import PushTaskSpec
from pushtask.templates import TemplateError, compile_message
from pushtask_worker.channels import Attempt, Channel, Delivery, UnknownChannel
from pushtask_worker.ratelimit import TokenBucket
from pushtask_worker.sending import Sender, make_channel

# Exit statuses: every recipient delivered, some not, nothing could be sent at all.
ALL_SENT, SOME_FAILED, CANNOT_SEND = 0, 1, 2


class _Recording(Channel):
    """The task's channel, remembering each user's last answer (its status code), which
    the worker's results do not keep."""

    def __init__(self, inner: Channel) -> None:
        super().__init__(inner.ctx)
        self.inner = inner
        self.last: dict[str, Attempt] = {}

    @property
    def max_concurrency(self) -> int:
        return self.inner.max_concurrency

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def send(self, delivery: Delivery) -> Attempt:
        attempt = await self.inner.send(delivery)
        self.last[delivery.user] = attempt
        return attempt


def bounded(spec: PushTaskSpec) -> PushTaskSpec:
    """The spec with a test's bounds on retries: at most MAX_ATTEMPTS attempts and
    MAX_BACKOFF_SECONDS between them (a run's policy may wait minutes)."""
    backoff = spec.delivery.backoff
    shorter = backoff.model_copy(
        update={
            "max_seconds": min(backoff.max_seconds, testsend.MAX_BACKOFF_SECONDS),
            "initial_seconds": min(backoff.initial_seconds, testsend.MAX_BACKOFF_SECONDS),
        }
    )
    delivery = spec.delivery.model_copy(
        update={"max_attempts": min(spec.delivery.max_attempts, testsend.MAX_ATTEMPTS),
                "backoff": shorter}
    )  # fmt: skip
    return spec.model_copy(update={"delivery": delivery})


async def send_all(
    request: testsend.TestSend,
    env: Mapping[str, str] | None = None,
    on_outcome: Callable[[testsend.Outcome], None] | None = None,
) -> list[testsend.Outcome]:
    """Send the test to each recipient, one after the other, at the task's rate;
    `on_outcome` hears each as soon as it is known (a pod ended by its deadline has
    reported those before). Raises ValueError (ValidationError, TemplateError) or
    UnknownChannel when nothing can be sent."""
    spec = bounded(PushTaskSpec.model_validate(request.spec))
    compiled = compile_message(spec.message.template)
    channel = _Recording(make_channel(spec, concurrency=1, env=env))
    sender = Sender(
        task=request.task,
        run=spec.run,
        run_id=f"test-{request.nonce}",
        spec=spec,
        compiled=compiled,
        channel=channel,
        bucket=TokenBucket(spec.rate.per_second),
        test_nonce=request.nonce,
    )
    found: list[testsend.Outcome] = []
    async with channel:
        for position, r in enumerate(request.recipients):
            result = await sender.send(position, r.user, r.attrs)
            last = channel.last.get(r.user)
            outcome = testsend.Outcome(
                user=r.user,
                outcome="sent" if result.status == "sent" else "failed",
                attempts=result.attempts,
                status=last.status if last is not None else None,
                detail=result.error or "",
            )
            found.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    return found


def run(text: str, env: Mapping[str, str] | None = None) -> int:
    """The whole command on the request (its env value): outcome lines on stdout, the exit
    status."""
    try:
        request = testsend.TestSend.decode(text)
    except (ValueError, KeyError, TypeError) as error:
        print(f"pushtask-worker test-send: bad {testsend.ENV}: {error}", file=sys.stderr)
        return CANNOT_SEND
    reported: set[str] = set()

    def report(outcome: testsend.Outcome) -> None:
        reported.add(outcome.user)
        print(outcome.line(), flush=True)

    try:
        found = asyncio.run(send_all(request, env, report))
    except (ValidationError, TemplateError, UnknownChannel, ValueError, TypeError) as error:
        # The channel could not be made (or closed): every recipient not yet reported
        # gets the reason.
        for r in request.recipients:
            if r.user not in reported:
                report(testsend.Outcome(r.user, "failed", 0, None, f"cannot send: {error}"))
        return CANNOT_SEND
    return ALL_SENT if all(o.delivered for o in found) else SOME_FAILED


def main() -> int:
    text = os.environ.get(testsend.ENV)
    if not text:
        print(f"pushtask-worker test-send: {testsend.ENV} is not set", file=sys.stderr)
        return CANNOT_SEND
    return run(text)
