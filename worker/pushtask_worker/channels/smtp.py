"""SMTP channel: one aiosmtplib connection reused for many messages.

Settings: the ``message.smtp`` model (host, port, tls or starttls, from, toField: the row
attribute holding the address; a user id that looks like an address is used otherwise).
Credentials and an extra CA come from the environment: ``PUSHTASK_SMTP_USERNAME``,
``PUSHTASK_SMTP_PASSWORD`` and ``PUSHTASK_SMTP_CA_BUNDLE`` (the operator maps the Secrets
there).

The subject is the rendered ``title`` (or ``extra.subject``), the text body is ``body``
followed by ``link``. ``Message-ID`` is derived from the idempotency key, so a mail system
that deduplicates by Message-ID drops a repeat of an AtLeastOnce resend.
Reply codes: 2xx delivered, 4xx retried, 5xx final; a dropped connection is reopened.
"""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from typing import Any, ClassVar

import aiosmtplib

from pushtask.models import Smtp
from pushtask_worker.channels.base import Attempt, Channel, ChannelContext, Delivery, Outcome
from pushtask_worker.channels.credentials import ssl_context

# A test send (Delivery.test) carries this header: `X-PushTask-Test: true`.
TEST_HEADER = "X-PushTask-Test"


class SmtpChannel(Channel):
    name: ClassVar[str] = "smtp"

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        s = ctx.settings_as(Smtp)
        self.host = s.host
        self.tls = s.tls
        self.port = s.server_port
        self.starttls = s.starttls and not s.tls
        self.sender = s.from_
        self.to_attribute = s.to_field
        self.timeout = s.timeout_seconds
        # Verified always: the system's CAs plus the Secret's, if one is given.
        self.tls_context = ssl_context(ctx.secret("SMTP_CA_BUNDLE"))
        self.username = ctx.secret("SMTP_USERNAME")
        self.password = ctx.secret("SMTP_PASSWORD")
        self._smtp: aiosmtplib.SMTP | None = None
        # One connection carries one transaction at a time: sends queue on this lock.
        self._lock = asyncio.Lock()

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.tls,
            # None lets aiosmtplib upgrade when offered; False never; True requires it.
            start_tls=True if self.starttls else False,
            tls_context=self.tls_context,
            timeout=self.timeout,
            username=self.username,
            password=self.password,
        )
        await smtp.connect()
        return smtp

    async def start(self) -> None:
        # Connect lazily on the first send: a worker with nothing to deliver opens nothing.
        return None

    async def close(self) -> None:
        if self._smtp is not None:
            try:
                await self._smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                self._smtp.close()
            self._smtp = None

    def recipient_address(self, delivery: Delivery) -> str | None:
        addr = delivery.attrs.get(self.to_attribute)
        if isinstance(addr, str) and "@" in addr:
            return addr
        return delivery.user if "@" in delivery.user else None

    def build(self, delivery: Delivery, to: str) -> EmailMessage:
        msg = EmailMessage()
        m = delivery.message
        extra_field = m.get("extra")
        extra: dict[str, Any] = extra_field if isinstance(extra_field, dict) else {}
        msg["From"] = self.sender
        msg["To"] = to
        msg["Subject"] = str(m.get("title") or extra.get("subject") or "")
        msg["Message-ID"] = f"<{delivery.idempotency_key}@pushtask>"
        msg["X-PushTask-Idempotency-Key"] = delivery.idempotency_key
        if delivery.test:
            msg[TEST_HEADER] = "true"
        text = str(m.get("body") or "")
        if m.get("link"):
            text = f"{text}\n\n{m['link']}" if text else str(m["link"])
        msg.set_content(text)
        return msg

    async def send(self, delivery: Delivery) -> Attempt:
        to = self.recipient_address(delivery)
        if to is None:
            return Attempt(Outcome.FINAL, f"no e-mail address (attribute {self.to_attribute!r})")
        msg = self.build(delivery, to)
        async with self._lock:
            try:
                if self._smtp is None or not self._smtp.is_connected:
                    self._smtp = await self._connect()
                errors, response = await self._smtp.send_message(msg)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                codes = [r.code for r in exc.recipients]
                detail = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)[:300]
                final = all(c >= 500 for c in codes)
                return Attempt(Outcome.FINAL if final else Outcome.RETRY, detail, None, codes[0])
            except aiosmtplib.SMTPResponseException as exc:
                outcome = Outcome.FINAL if exc.code >= 500 else Outcome.RETRY
                if isinstance(exc, aiosmtplib.SMTPServerDisconnected) or exc.code < 400:
                    outcome = Outcome.RETRY
                return Attempt(outcome, f"{exc.code} {exc.message}"[:300], None, exc.code)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                # Connection trouble: drop the connection, the next attempt reconnects.
                if self._smtp is not None:
                    self._smtp.close()
                self._smtp = None
                return Attempt(Outcome.RETRY, f"{type(exc).__name__}: {exc}"[:300])
        if errors:
            code, text = next(iter(errors.values()))
            outcome = Outcome.FINAL if code >= 500 else Outcome.RETRY
            return Attempt(outcome, f"{code} {text}"[:300], None, code)
        return Attempt.ok(250 if response else None)
