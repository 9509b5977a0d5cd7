"""The notification sender: delivers the store's queued notifications, in the background.

The reconcile only records a phase change's notifications in the store's outbox
(`notify.py` decides them); this loop, started with the operator, sends them. So a dead
endpoint or a slow SMTP server costs the reconcile nothing, and workers scaled to zero
change nothing. Each notification is claimed with a lease (`Store.claim_notification`),
sent, then marked sent; a failed attempt is tried again with exponential back-off
(`notify.next_attempt`) and given up after an hour, or at once when the receiver refuses
it for good (4xx other than 408/429, an SMTP 5xx). A Normal Event `NotificationSent` or a
Warning `NotificationFailed` is posted on the PushTask either way.

Delivery is at least once: an operator that dies after the receiver's 2xx and before the
store marks the notification sent sends it again after its restart, with the same
`webhook-id` (and Message-ID), so a receiver that keeps the ids it saw drops the repeat.
A restart never resends one marked sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import aiosmtplib
import orjson
from pymongo.errors import PyMongoError

from pushtask.models import API_VERSION, KIND, NotifyWebhook, Smtp
from pushtask.signing import signing_key, standard_headers
from pushtask.store import GAVE_UP, SENT, Store
from pushtask.tls import ssl_context
from pushtask_operator import metrics, notify

log = logging.getLogger("pushtask.operator")

# A claim outlives any one attempt (a request times out after at most 300 s).
CLAIM_SECONDS = 360.0
# Looked at this often even without a nudge: a notification due after a back-off, one a
# previous operator process recorded, one whose claim ran out.
IDLE_SECONDS = 30.0
# Notifications sent at once: one dead endpoint does not hold up the others.
CONCURRENCY = 8


class SecretReader(Protocol):
    async def secret_value(self, namespace: str, name: str, key: str) -> str | None: ...


# kube.Kube.post_event: (involved object, kind, type, reason, message).
EventPoster = Callable[[Mapping[str, Any], str, str, str, str], Awaitable[None]]


@dataclass(frozen=True)
class Attempt:
    """One try at a notification: delivered, or why not and whether trying again helps."""

    ok: bool
    detail: str = ""
    final: bool = False


class Unavailable(Exception):
    """What a notification needs is not there yet (a Secret, a key): tried again later."""


def shown_url(url: str) -> str:
    """The endpoint as messages name it: no user:password, no query (it may hold a token)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def describe_target(target: Mapping[str, Any]) -> str:
    if "webhook" in target:
        return f"webhook {shown_url(target['webhook']['url'])}"
    return "e-mail to " + ", ".join(target["email"]["to"])


def classify_http(status: int) -> Attempt:
    """2xx delivered; 408, 429 and 5xx tried again; any other answer is final."""
    if 200 <= status < 300:
        return Attempt(True, f"HTTP {status}")
    return Attempt(False, f"HTTP {status}", final=not (status in (408, 429) or status >= 500))


class Notifier:
    """Sends the outbox's due notifications; `run()` is the background loop."""

    def __init__(
        self,
        store: Store,
        secrets: SecretReader,
        events: EventPoster,
        *,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.secrets = secrets
        self.events = events
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._nudge = asyncio.Event()
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._session: aiohttp.ClientSession | None = None

    def wake(self) -> None:
        """New notifications were recorded: look now rather than at the next idle tick."""
        self._nudge.set()

    async def run(self) -> None:
        """Until cancelled: send what is due, sleep until the next is due or a nudge."""
        try:
            while True:
                self._nudge.clear()  # before reading: a nudge from now on is not lost
                delay = IDLE_SECONDS
                try:
                    await self.drain()
                    delay = await self._until_next()
                except PyMongoError as exc:  # waited out, like every store outage
                    log.warning("notifications: MongoDB unavailable (%s); trying again", exc)
                try:
                    async with asyncio.timeout(delay):
                        await self._nudge.wait()
                except TimeoutError:
                    pass
        finally:
            await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _until_next(self) -> float:
        due = await self.store.next_notification_at()
        if due is None:
            return IDLE_SECONDS
        return min(IDLE_SECONDS, max(0.0, (due - self.store.now()).total_seconds()))

    async def drain(self) -> int:
        """Send every notification due now (CONCURRENCY at a time); how many were tried."""
        await self.store.sync_clock(max_age=10.0)
        running: set[asyncio.Task[None]] = set()
        tried = 0
        try:
            while True:
                await self._slots.acquire()
                try:
                    doc = await self.store.claim_notification(self.owner, CLAIM_SECONDS)
                except BaseException:
                    self._slots.release()
                    raise
                if doc is None:
                    self._slots.release()
                    break
                tried += 1
                task = asyncio.create_task(self._deliver_in_slot(doc))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        return tried

    async def _deliver_in_slot(self, doc: dict[str, Any]) -> None:
        try:
            await self.deliver(doc)
        except PyMongoError as exc:  # the claim runs out; the next drain tries again
            log.warning("notification %s not recorded (MongoDB: %s)", doc["_id"], exc)
        finally:
            self._slots.release()

    async def deliver(self, doc: dict[str, Any]) -> None:
        """One attempt at a claimed notification, and its outcome recorded."""
        target = doc["target"]
        kind = "webhook" if "webhook" in target else "email"
        try:
            attempt = await (self._webhook(doc) if kind == "webhook" else self._email(doc))
        except Unavailable as exc:
            attempt = Attempt(False, str(exc))
        except Exception as exc:  # an API error reading a Secret, a TLS set-up error, ...
            attempt = Attempt(False, f"{type(exc).__name__}: {exc}"[:300])
        task, what = doc["task"], describe_target(target)
        attempts = int(doc.get("attempts") or 0) + 1
        name = f"{task['namespace']}/{task['name']}"
        if attempt.ok:
            if await self.store.notification_done(doc, SENT):
                metrics.NOTIFICATIONS.labels(kind, "sent").inc()
                log.info("%s: %s notification sent (%s)", name, doc["phase"], what)
                await self._event(
                    task,
                    "Normal",
                    "NotificationSent",
                    f"{doc['phase']} of run {doc['payload']['run']} reported to {what}",
                )
            return
        next_at = (
            None
            if attempt.final
            else notify.next_attempt(doc["created"], attempts, self.store.now())
        )
        if next_at is None:
            if await self.store.notification_done(doc, GAVE_UP, attempt.detail):
                metrics.NOTIFICATIONS.labels(kind, "failed").inc()
                why = "refused" if attempt.final else f"given up after {attempts} attempts"
                log.warning(
                    "%s: %s notification to %s %s: %s",
                    name,
                    doc["phase"],
                    what,
                    why,
                    attempt.detail,
                )
                await self._event(
                    task,
                    "Warning",
                    "NotificationFailed",
                    f"{doc['phase']} of run "
                    f"{doc['payload']['run']} not reported to {what} ({why}): "
                    f"{attempt.detail}",
                )
            return
        if await self.store.notification_retry(doc, next_at, attempt.detail):
            metrics.NOTIFICATIONS.labels(kind, "retried").inc()
            wait = (next_at - self.store.now()).total_seconds()
            log.info(
                "%s: %s notification to %s failed (%s); again in %.0fs",
                name,
                doc["phase"],
                what,
                attempt.detail,
                wait,
            )

    async def _event(self, task: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        involved = {"apiVersion": API_VERSION, **task}
        try:
            await self.events(involved, KIND, type, reason, message)
        except Exception as exc:  # a courtesy: the outbox has the outcome either way
            log.warning("could not post the %s Event on %s: %s", reason, task.get("name"), exc)

    async def _secret(self, namespace: str, name: str, key: str, field: str) -> str:
        value = await self.secrets.secret_value(namespace, name, key)
        if value is None:
            raise Unavailable(f'{field}: Secret "{name}" has no key "{key}" (or does not exist)')
        return value

    # -- webhook -------------------------------------------------------------------------

    async def _webhook(self, doc: dict[str, Any]) -> Attempt:
        hook = NotifyWebhook.model_validate(doc["target"]["webhook"])
        namespace = doc["task"]["namespace"]
        keys: list[bytes] = []
        ref = hook.secret_ref
        if ref is not None:
            for key in (ref.key, ref.previous_key):
                if key is None:
                    continue
                value = await self._secret(namespace, ref.name, key, "spec.notify[].webhook")
                try:
                    keys.append(signing_key(value))
                except ValueError as error:  # the value itself never goes into a message
                    return Attempt(False, f'Secret "{ref.name}" key "{key}": {error}', final=True)
        body = orjson.dumps(doc["payload"])
        # A fresh timestamp per attempt (a retry after a back-off is not stale); the id is
        # the notification's own, the same on every attempt.
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "pushtask-operator",
            "Idempotency-Key": doc["_id"],
            **standard_headers(keys, doc["_id"], str(int(time.time())), body),
        }
        if self._session is None:
            self._session = aiohttp.ClientSession()
        limit = aiohttp.ClientTimeout(total=hook.timeout_seconds)
        try:
            async with self._session.post(
                hook.url, data=body, headers=headers, timeout=limit
            ) as resp:
                await resp.read()
                return classify_http(resp.status)
        except TimeoutError:
            return Attempt(False, f"timeout after {hook.timeout_seconds:g}s")
        except aiohttp.ClientError as exc:
            return Attempt(False, f"{type(exc).__name__}: {exc}"[:300])

    # -- e-mail --------------------------------------------------------------------------

    async def _email(self, doc: dict[str, Any]) -> Attempt:
        target = doc["target"]["email"]
        smtp = Smtp.model_validate(target["smtp"])
        namespace = doc["task"]["namespace"]
        username = password = ca = None
        if smtp.credentials_secret_ref is not None:
            name = smtp.credentials_secret_ref.name
            where = "spec.message.smtp.credentialsSecretRef"
            username = await self._secret(namespace, name, "username", where)
            password = await self._secret(namespace, name, "password", where)
        if smtp.ca_secret_ref is not None:
            ref = smtp.ca_secret_ref
            ca = await self._secret(namespace, ref.name, ref.key, "spec.message.smtp.caSecretRef")
        subject, text = notify.email_text(doc["payload"])
        msg = EmailMessage()
        msg["From"] = smtp.from_
        msg["To"] = ", ".join(target["to"])
        msg["Subject"] = subject
        msg["Message-ID"] = f"<{doc['_id']}@pushtask>"  # the same on every attempt
        msg.set_content(text)
        try:
            await aiosmtplib.send(
                msg,
                hostname=smtp.host,
                port=smtp.server_port,
                use_tls=smtp.tls,
                start_tls=True if smtp.starttls and not smtp.tls else False,
                tls_context=ssl_context(ca),
                username=username,
                password=password,
                timeout=smtp.timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            detail = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)[:300]
            return Attempt(False, detail, final=all(r.code >= 500 for r in exc.recipients))
        except aiosmtplib.SMTPResponseException as exc:
            final = exc.code >= 500 and not isinstance(exc, aiosmtplib.SMTPServerDisconnected)
            return Attempt(False, f"{exc.code} {exc.message}"[:300], final=final)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return Attempt(False, f"{type(exc).__name__}: {exc}"[:300])
        return Attempt(True, "250")
