"""The Celery baseline's tasks: what a Python team would write instead of PushTask.

A Redis broker, `acks_late` (a task lost with its worker is redelivered, the nearest Celery
comes to PushTask's leases), no result backend (nothing per recipient is kept, which favours
Celery: PushTask records every outcome). Each task posts the very request the ceiling does,
through a pooled `requests` session per pool process, and adds what it sent to one Redis
counter: one INCRBY per task, so the benchmark learns that all N are done from the broker it
already runs instead of polling the sink, whose stats walk every request recorded.

The benchmark starts `celery -A bench.celery_tasks worker` with BENCH_CELERY_BROKER and
BENCH_SINK_URL in its environment (bench/celery_baseline.py).
"""

from __future__ import annotations

import os

import redis
import requests
from celery import Celery

from bench.payload import body_for, headers_for

SENT_KEY = "bench:sent"

app = Celery("bench", broker=os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    # One message format and no pickle, as Celery's own docs advise.
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

# Made on first use, so in the pool process that uses it (not shared across the fork).
_session: requests.Session | None = None
_counter: redis.Redis | None = None


def _clients() -> tuple[requests.Session, redis.Redis]:
    global _session, _counter
    if _session is None or _counter is None:
        _session = requests.Session()
        _counter = redis.Redis.from_url(app.conf.broker_url)
    return _session, _counter


def _post(session: requests.Session, url: str, user: str) -> None:
    resp = session.post(url, data=body_for(user), headers=headers_for(user), timeout=5)
    resp.raise_for_status()


@app.task(name="bench.send_one")
def send_one(user: str) -> None:
    session, counter = _clients()
    _post(session, os.environ["BENCH_SINK_URL"], user)
    counter.incrby(SENT_KEY, 1)


@app.task(name="bench.send_batch")
def send_batch(users: list[str]) -> None:
    session, counter = _clients()
    url = os.environ["BENCH_SINK_URL"]
    for user in users:
        _post(session, url, user)
    counter.incrby(SENT_KEY, len(users))
