"""The one request every mode of the benchmark sends, so that the sink sees the same bytes
and headers whoever sends them (the ceiling, naive, the Celery tasks, and pushtask's webhook
channel without a signing secret)."""

from __future__ import annotations

import json
import time

from pushtask.planning import idempotency_key


def body_for(user: str) -> bytes:
    # Compact UTF-8, the shape of the worker's body, so every mode sends as many bytes.
    return json.dumps(
        {
            "task": {"namespace": "bench", "name": "bench"},
            "run": 1,
            "user": user,
            "message": {"title": f"Hi {user}", "body": "Run 1"},
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def headers_for(user: str) -> dict[str, str]:
    # The webhook channel's headers (pushtask_worker/channels/webhook.py), value for value
    # in length: a receiver parses as much whoever sends.
    key = idempotency_key("bench", 1, user)
    return {
        "Content-Type": "application/json",
        "User-Agent": "pushtask-worker",
        "Idempotency-Key": key,
        "X-PushTask-Attempt": "1",
        "webhook-id": key,  # the Standard Webhooks headers, unsigned (no secret)
        "webhook-timestamp": str(int(time.time())),
    }
