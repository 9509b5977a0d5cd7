"""What the mobile push channels share: a cached bearer token, TLS trust, device tokens.

A worker runs many sends at once; they all use one cached token. The first send that
needs a token makes it while the others wait on the same lock, so a worker makes one
token per lifetime, not one per send. A token the server refused is renewed once: every
send that saw the refusal asks with the token it used, and only the first one (whose
token is still the cached one) makes a new token; the rest get that new one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pushtask.tls import ssl_context as ssl_context  # shared with the operator


@dataclass(frozen=True)
class Token:
    value: str
    renew_at: float  # clock() time from which the cache makes a new token


class TokenError(Exception):
    """A token could not be made. `final`: retrying will not help (bad credentials)."""

    def __init__(self, message: str, *, final: bool) -> None:
        super().__init__(message)
        self.final = final


class TokenCache:
    """One bearer token shared by every send of a channel, renewed before it runs out."""

    def __init__(
        self, make: Callable[[], Awaitable[Token]], clock: Callable[[], float] = time.time
    ) -> None:
        self._make = make
        self._clock = clock
        self._token: Token | None = None
        self._lock = asyncio.Lock()
        self.made = 0  # tokens made (metrics, tests)

    async def get(self) -> str:
        token = self._token
        if token is not None and self._clock() < token.renew_at:
            return token.value
        async with self._lock:
            token = self._token
            if token is None or self._clock() >= token.renew_at:
                token = await self._make()
                self._token = token
                self.made += 1
            return token.value

    async def renew(self, refused: str) -> str:
        """A token after the server refused `refused`: a new one unless another send has
        already replaced it."""
        async with self._lock:
            token = self._token
            if token is None or token.value == refused:
                token = await self._make()
                self._token = token
                self.made += 1
            return token.value


def device_token(attrs: Mapping[str, Any], attribute: str) -> str | None:
    """The recipient's device token from its row, or None when it has none."""
    value = attrs.get(attribute)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def notification_id(idempotency_key: str) -> str:
    """A UUID (APNs' apns-id format) derived from the idempotency key: the same on every
    attempt and every worker, so a resend carries the id of the first send."""
    try:
        raw = bytes.fromhex(idempotency_key)
    except ValueError:
        raw = b""
    if len(raw) >= 16:  # the usual sha256 hex: its first 128 bits, as a version-4 UUID
        return str(uuid.UUID(bytes=raw[:16], version=4))
    return str(uuid.uuid5(uuid.NAMESPACE_OID, idempotency_key))


def stringify(values: Mapping[str, Any]) -> dict[str, str]:
    """FCM data values are strings only."""
    return {str(k): v if isinstance(v, str) else str(v) for k, v in values.items()}
