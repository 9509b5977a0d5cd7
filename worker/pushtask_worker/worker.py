"""A worker process: heartbeat beside the work; audience splits, then shard seals, then chunks.

The heartbeat runs on its own task and is never blocked by the work (the seed's heartbeat
shared the work loop, so a long batch looked like a dead worker that then kept sending
beside its replacement). It renews the lease of the split in hand; a renewal that matches
nothing cancels that split's work at once. It also re-reads the run (the operator's
control: state, cancellation) and the store's clock. The rate is agreed among the task's
senders on a faster beat of its own (rateshare.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from pushtask import ledger, schedule
from pushtask.leases import Lease, LeaseLost
from pushtask.models import PushTaskSpec
from pushtask.records import RunTotals
from pushtask.store import STAGES, Store
from pushtask.templates import TemplateError, compile_message
from pushtask.tracking import KEY_ENV, LinkRewriter
from pushtask_worker import metrics
from pushtask_worker.audience.build import SourceReaders, SplitBuilder, describe_source
from pushtask_worker.audience.mongosource import QueryNotAllowed
from pushtask_worker.audience.urlsource import SourceError, SourceMissing
from pushtask_worker.channels import UnknownChannel
from pushtask_worker.config import WorkerConfig
from pushtask_worker.delivery import HOLD_SECONDS, ChunkDelivery
from pushtask_worker.rateshare import RateShare
from pushtask_worker.resilience import StoreGuard
from pushtask_worker.sending import Sender, make_channel

log = logging.getLogger("pushtask.worker")
SOURCE_ATTEMPTS = 5  # a source that fails this many claims in a row fails the run


@dataclass
class Control:
    """What the heartbeat last read from the run document."""

    state: str = "Started"
    cancel_inflight: bool = False
    failure: str | None = None
    stage: str = "audience"


@dataclass
class Worker:
    config: WorkerConfig
    store: Store
    control: Control = field(default_factory=Control)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    lease: Lease | None = None
    work: asyncio.Task[bool] | None = None
    source_failures: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.guard = StoreGuard(stopping=self.stopping.is_set)
        self.share = RateShare(self.store, self.config.run_id, self.config.worker_id)

    # -- the run --------------------------------------------------------------------------

    async def load_run(self) -> dict[str, Any]:
        run = await self.guard.call(lambda: self.store.get_run(self.config.run_id), "load run")
        if run is None:
            raise SystemExit(f"run {self.config.run_id!r} not found in the store")
        return run

    def halted(self) -> bool:
        """Stop taking new work: shutting down, run no longer Started, window closed."""
        c = self.control
        return (
            self.stopping.is_set()
            or c.state != "Started"
            or c.failure is not None
            or self.sender.gone is not None  # the receiver is gone: known before any beat
            or not schedule.in_window(self.spec.schedule, self.store.now())
        )

    def done(self) -> bool:
        c = self.control
        return c.stage == "done" or c.failure is not None or c.state == "Stopped"

    async def refresh(self) -> None:
        """Heartbeat: renew the lease in hand, be seen, re-read the run's control and the
        store's clock.

        The calls go out together: on a slow store a beat costs one call's latency, not
        the sum of five (a worker whose calls take 5 s each still renews and is seen)."""
        store, cfg = self.store, self.config
        held, work = self.lease, self.work

        async def renewal() -> Lease | None:
            if held is None:
                return None
            try:
                return await self.guard.call(lambda: store.renew(held), "renew")
            except LeaseLost:
                return None

        lease_field = {"lease": getattr(held, "unit_id", None)}
        # Only the control fields: a beat never re-reads the spec (an inline audience is big).
        control_fields = ("control", "failure", "stage")
        renewed, _, run, totals, _ = await asyncio.gather(
            renewal(),
            self.guard.call(
                lambda: store.heartbeat(cfg.worker_id, cfg.run_id, lease_field), "heartbeat"
            ),
            self.guard.call(lambda: store.get_run(cfg.run_id, control_fields), "read run"),
            self.guard.call(lambda: store.totals(cfg.run_id), "totals"),
            self.guard.call(store.sync_clock, "read the store's clock"),
        )
        metrics.HEARTBEAT.labels(self.label).set_to_current_time()
        # The work may have moved on while the renewal was on its way: released this unit
        # (done, or given back) and claimed another. Only the lease still in hand is
        # updated or dropped; a new unit's lease and work are left alone.
        if held is not None and self.lease is held:
            if renewed is not None:
                self.lease = renewed
            elif work is not None and not work.done():
                metrics.LEASE_LOSSES.labels(self.label).inc()
                log.warning("lease lost: dropping the work", extra={"unit": held.unit_id})
                self.lease = None
                work.cancel()
        if run is None:
            return
        control = run.get("control") or {}
        self.control = Control(
            state=control.get("state", "Started"),
            cancel_inflight=bool(control.get("cancelInflight")),
            failure=(run.get("failure") or {}).get("reason"),
            stage=run.get("stage", "audience"),
        )
        if self.work is not None and self.control.cancel_inflight:
            self.work.cancel()  # an immediate degrade: in-flight sends follow the guarantee
        await self.check_failure_budget(totals)

    async def check_failure_budget(self, totals: RunTotals) -> None:
        budget = self.spec.delivery.failure_threshold
        reason = totals.budget_spent(budget.ratio, budget.min_sample)
        if reason is not None:
            if await self.store.fail_run(self.config.run_id, reason):
                log.error("run failed", extra={"reason": reason})
            self.control.failure = reason

    async def heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            started = loop.time()
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat failed")
            # A fixed beat, not a fixed pause: time a slow store took comes off the wait.
            pause = max(0.0, self.config.heartbeat_seconds - (loop.time() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), pause)
        await self.last_look()

    async def last_look(self) -> None:
        """Stopping (SIGTERM): the scale-down that pauses a degraded tier comes with its
        `cancelInflight`, and usually overtakes the heartbeat that would read it. The
        operator writes the control before it scales, so one more read sees it."""
        work = self.work
        if work is None or work.done():
            return
        try:
            async with asyncio.timeout(5):
                run = await self.store.get_run(self.config.run_id, ("control",))
        except Exception:  # the store away: the in-flight window drains as on any SIGTERM
            return
        if run is not None and (run.get("control") or {}).get("cancelInflight"):
            log.info("stopping: in-flight sends cancelled (immediate degrade)")
            work.cancel()

    # -- the work -------------------------------------------------------------------------

    async def setup(self) -> None:
        self.run_doc = await self.load_run()
        try:
            self.spec = PushTaskSpec.model_validate(self.run_doc["spec"])
            self.compiled = compile_message(self.spec.message.template)
            # A channel refusing its settings or secret (a malformed whsec_ value) fails the
            # run with the reason, rather than a worker that crashes at every restart.
            self.channel = make_channel(self.spec, self.config.concurrency)
            # A run that tracks links without the key to sign them fails here, unsent.
            key = os.environ.get(KEY_ENV, "").strip().encode()
            self.links = LinkRewriter.for_run(self.config.run_id, self.run_doc["spec"], key)
        except (ValidationError, ValueError, TemplateError, UnknownChannel, TypeError) as error:
            await self.store.fail_run(self.config.run_id, f"cannot start: {error}")
            raise SystemExit(f"cannot start run {self.config.run_id}: {error}") from None
        self.readers = SourceReaders(self.config.mongo_uri)
        task = self.run_doc["task"]
        self.label = f"{task['namespace']}/{task['name']}"
        self.share.label = self.label
        self.sender = Sender(
            task=task,
            run=int(self.run_doc["run"]),
            run_id=self.config.run_id,
            spec=self.spec,
            compiled=self.compiled,
            channel=self.channel,
            bucket=self.share,
            stopping=self.stopping,
            on_gone=self.receiver_gone,
            links=self.links,
        )

    async def receiver_gone(self, reason: str) -> None:
        """A channel said the receiver itself is gone (a webhook's 410): every later send
        would fail the same way, so the run fails with the reason (the operator then stops
        the other workers). This worker's lanes stop at once (`halted`); what is in flight
        is recorded as it ends."""
        self.control.failure = reason
        log.error("run failed", extra={"reason": reason})
        await self.guard.call(lambda: self.store.fail_run(self.config.run_id, reason), "fail run")

    async def run_forever(self) -> int:
        await self.guard.call(self.store.ensure_indexes, "ensure indexes")
        # Leases and heartbeats are written on the store's clock from the first claim on.
        await self.guard.call(self.store.sync_clock, "read the store's clock")
        await self.setup()
        await self.channel.start()
        beat = asyncio.create_task(self.heartbeat_loop())
        try:
            await self.refresh()
            while not self.stopping.is_set():
                if self.done() and self.config.exit_when_done:
                    break
                if self.halted() or not await self.step():
                    await self.idle()
            return 0
        finally:
            self.stopping.set()
            await self.share.leave()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            await self.channel.close()
            await self.readers.close()
            with contextlib.suppress(Exception):
                await self.store.forget_worker(self.config.worker_id)

    async def idle(self) -> None:
        # Nothing to send (halted, or no chunk to claim): the other senders take this
        # worker's share of the rate at their next rate beat.
        await self.share.leave()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), self.config.idle_seconds)
        if not self.stopping.is_set():
            await self.refresh()

    async def step(self) -> bool:
        """Claim and do one unit of work; False when there was nothing to claim.

        Audience splits first; once the audience is whole, shards to seal; chunks as soon
        as a shard is sealed (delivery of one shard does not wait for the others' seals).
        """
        cfg, store = self.config, self.store
        stage = self.control.stage
        if stage == "done":
            return False
        got: tuple[dict[str, Any], Lease] | None = None
        kind = "audience" if stage == "audience" else "seal"
        if stage in ("audience", "seal"):
            got = await self.guard.call(
                lambda: store.claim_split(cfg.run_id, kind, cfg.worker_id, cfg.lease_seconds),
                "claim",
            )
        if got is None and stage != "audience":
            kind = "chunk"
            got = await self.guard.call(
                # Chunks about to fall due are taken ahead, and their lanes wait for the
                # due time: an idle worker's poll would otherwise add up to a second.
                lambda: store.claim_chunk(
                    cfg.run_id, cfg.worker_id, cfg.lease_seconds, ahead=HOLD_SECONDS
                ),
                "claim",
            )
        if got is None:
            moved = await self.advance(stage)
            await self.refresh()
            # This worker ended the stage (it did the last unit): the next stage's work is
            # there to claim now, not after an idle pause (a second per stage, measured).
            return moved
        doc, self.lease = got
        metrics.LEASE_CLAIMS.labels(self.label, kind).inc()
        if kind == "chunk":
            await self.share.join()  # its sends wait until the other senders count it
        self.work = asyncio.create_task(self._do(kind, doc, self.lease))
        try:
            await self.work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this worker itself is being cancelled, not just the unit's work
            # The heartbeat cancelled the work: lease lost, or in-flight sends cancelled.
            log.info("work cancelled", extra={"split": doc["_id"]})
        except LeaseLost:
            metrics.LEASE_LOSSES.labels(self.label).inc()
            log.warning("lease lost mid-work", extra={"split": doc["_id"]})
        except QueryNotAllowed as error:
            # Permanent: the spec itself is refused, and no retry would change that.
            reason = f"audience source refused: {error}"
            log.error("run failed", extra={"reason": reason})
            await self.guard.call(lambda: store.fail_run(cfg.run_id, reason), "fail run")
        except SourceMissing as error:
            # Permanent too (a collection that does not exist); the split stays undone, so
            # the audience is never whole and no shard is sealed: nothing is ever sent.
            reason = f"{describe_source(self.run_doc, doc['source'])} unreadable: {error}"
            log.error("run failed", extra={"reason": reason})
            await self.guard.call(lambda: store.fail_run(cfg.run_id, reason), "fail run")
        except (SourceError, OSError) as error:
            await self.source_failed(doc, error)
        finally:
            self.work = None
            self.lease = None
        return True

    async def _do(self, kind: str, doc: dict[str, Any], lease: Lease) -> bool:
        finished = await self._work_on(kind, doc, lease)
        # The unit is ended (done or given back) by its own last write: its lease is out of
        # our hands now, and a renewal that crossed that write must not read as a loss.
        held = self.lease  # the heartbeat replaces it with each renewed copy
        if held is not None and (held.unit_id, held.token) == (lease.unit_id, lease.token):
            self.lease = None
        if finished and kind == "chunk":
            await self.advance(self.control.stage)  # the last chunk: exit now, not at a beat
        return finished

    async def advance(self, since: str) -> bool:
        """Take the run to its next stage if its current one is complete; True when it moved
        on from `since`, which this worker then knows without waiting for a beat. Only
        forward: a run deleted under us reads as "audience", and must not look like news."""
        after = await self.guard.call(lambda: self.store.advance(self.config.run_id), "advance run")
        moved = since in STAGES and STAGES.index(after) > STAGES.index(since)
        if moved:
            self.control.stage = after
        return moved

    async def _work_on(self, kind: str, doc: dict[str, Any], lease: Lease) -> bool:
        if kind == "audience":
            builder = SplitBuilder(
                self.store, self.guard, self.readers, self.run_doc, doc, lease, self.halted
            )
            return await builder.build()
        if kind == "seal":
            chunk_size = int(self.run_doc.get("chunkSize") or ledger.CHUNK_SIZE)
            sealed = await self.guard.call(
                lambda: self.store.seal_shard(lease, self.config.run_id, doc, chunk_size), "seal"
            )
            log.info(
                "shard sealed",
                extra={"split": doc["_id"], "n": len(sealed.recipients), "dups": sealed.duplicates},
            )
            return True
        delivery = ChunkDelivery(
            self.store,
            self.guard,
            self.sender,
            lease,
            doc,
            guarantee=self.spec.delivery.guarantee,
            concurrency=self.config.concurrency,
            window=self.config.send_window,
            halt=self.halted,
        )
        return await delivery.run()

    async def source_failed(self, doc: dict[str, Any], error: BaseException) -> None:
        """An unreadable source is retried by later claims; after a few, the run fails."""
        n = self.source_failures.get(doc["_id"], 0) + 1
        self.source_failures[doc["_id"]] = n
        log.warning(
            "source read failed", extra={"split": doc["_id"], "attempt": n, "error": str(error)}
        )
        if self.lease is not None:
            # Give the split back at once, to be tried again a little later.
            later = self.store.now() + timedelta(seconds=min(30, 2**n))
            with contextlib.suppress(Exception):
                await self.store.release(self.lease, done=False, not_before=later)
        if n >= SOURCE_ATTEMPTS:
            # The split was never done, so the audience is not whole and nothing was sealed
            # or sent: an unreadable exclusion stops the run before its first send.
            source = doc.get("source")
            what = describe_source(self.run_doc, source) if source else f"unit {doc['_id']}"
            reason = f"{what} unreadable after {n} attempts: {error}"
            log.error("run failed", extra={"reason": reason})
            await self.guard.call(lambda: self.store.fail_run(self.config.run_id, reason), "fail")
