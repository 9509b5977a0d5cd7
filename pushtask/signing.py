"""Standard Webhooks signing (standardwebhooks.com), shared by the webhook channel (one
request per recipient, in the worker) and the operator's completion notifications, so
both sign the same way with the same kind of Secret.

Headers: ``webhook-id`` (stable across attempts: receivers drop repeats), ``webhook-
timestamp`` (unix seconds of the attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256
of "<id>.<timestamp>.<body>">``, one per key, separated by a space. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    """The HMAC key of the standard scheme: the bytes a ``whsec_<base64>`` secret encodes,
    as every Standard Webhooks library reads it; any other value's own UTF-8 bytes (what
    the libraries take as a raw key), so a secret made for the pushtask scheme still
    works. Raises ValueError for a ``whsec_`` value that is not base64 (never signing with
    a key the receiver's library would read differently)."""
    text = secret.strip()  # a Secret made with --from-file often ends with a newline
    if not text.startswith(SECRET_PREFIX):
        return secret.encode()
    encoded = text[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        key = b""
    if not key:
        raise ValueError(
            "the secret starts with whsec_ but the rest is not base64 of a key "
            "(make one with: echo whsec_$(openssl rand -base64 32))"
        )
    return key


def standard_signature(keys: Sequence[bytes], msg_id: str, timestamp: str, body: bytes) -> str:
    """webhook-signature: ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`` for each
    key, separated by a space (a receiver accepts the request if one of them verifies)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


def standard_headers(
    keys: Sequence[bytes], msg_id: str, timestamp: str, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt (no signature without a key)."""
    headers = {ID_HEADER: msg_id, STANDARD_TIMESTAMP_HEADER: timestamp}
    if keys:
        headers[STANDARD_SIGNATURE_HEADER] = standard_signature(keys, msg_id, timestamp, body)
    return headers
