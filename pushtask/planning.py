"""From a spec to a run: the run document and its audience splits.

Pure functions: the operator calls them when a run starts and hands the result to the
store. The spec arrives in its frozen JSON form (camelCase keys), exactly as it is kept
in the run document, so planning never depends on how the models are built in Python.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pushtask import ledger
from pushtask.leases import EPOCH, QUEUED

# An inline list is cut into blocks of this many users so several workers share it.
INLINE_BLOCK = 5000
# Sources whose size is only known by reading them (a MongoDB query, a URL) get one
# planning split; the worker that claims it cuts it into ranges for the others.
EXPANDABLE_KINDS = frozenset({"mongo", "url"})


@dataclass(frozen=True)
class TaskRef:
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class RunPlan:
    run_doc: dict[str, Any]
    splits: list[dict[str, Any]]


def run_id_for(task: TaskRef, run: int) -> str:
    # The uid part keeps a re-created task of the same name from meeting the old run's data.
    return f"{task.namespace}.{task.name}.{run}.{task.uid[:8]}"


def idempotency_key(task_uid: str, run: int, user: str) -> str:
    return hashlib.sha256(f"{task_uid}:{run}:{user}".encode()).hexdigest()


def audience_split_id(run_id: str, n: int | str) -> str:
    return f"{run_id}/a/{n}"


def new_split(run_id: str, split_id: str, kind: str, index: int, **extra: Any) -> dict[str, Any]:
    """A split nobody has claimed yet (also used by workers that cut a source into ranges)."""
    return {
        "_id": split_id,
        "run": run_id,
        "kind": kind,
        "index": index,
        "status": QUEUED,
        "owner": None,
        "token": 0,
        "leaseUntil": None,
        "notBefore": EPOCH,
        "counters": {},
        **extra,
    }


def audience_splits(run_id: str, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One split per block of an inline list, per ConfigMap, per expandable source."""
    audience = spec["audience"]
    out: list[dict[str, Any]] = []
    sources = [(False, i, s) for i, s in enumerate(audience["sources"])] + [
        (True, i, s) for i, s in enumerate(audience.get("exclude") or [])
    ]
    for exclude, index, source in sources:
        kind = source["kind"]
        ranges: list[dict[str, Any] | None]
        if kind == "inline":
            n = len(source.get("users") or [])
            ranges = [
                {"start": a, "end": min(a + INLINE_BLOCK, n)} for a in range(0, n, INLINE_BLOCK)
            ]
        else:
            # ConfigMaps are small (1 MiB at most); mongo/url are planned by their first reader.
            ranges = [None]
        for rng in ranges:
            n_split = len(out)
            out.append(
                new_split(
                    run_id,
                    audience_split_id(run_id, n_split),
                    "audience",
                    n_split,
                    source={
                        "kind": kind,
                        "index": index,
                        "exclude": exclude,
                        "range": rng,
                        "expand": kind in EXPANDABLE_KINDS and rng is None,
                    },
                    cursor=None,
                )
            )
    return out


def plan_run(
    task: TaskRef,
    run: int,
    spec: Mapping[str, Any],
    *,
    inline: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    rate_per_second: float | None = None,
    chunk_size: int = ledger.CHUNK_SIZE,
    now: datetime,
) -> RunPlan:
    """Freeze `spec` into a run document and cut its audience into splits.

    Shards and their chunks come later, once the audience is whole (see ledger.py); the
    bucket count and the chunk size are fixed here, for the whole run, so that every
    worker that stages or seals cuts the same way."""
    run_id = run_id_for(task, run)
    buckets = int(spec["audience"].get("shards", 256))
    doc = {
        "_id": run_id,
        # Labels frozen with the run: frequency caps of other tasks select runs by them.
        "task": {
            "namespace": task.namespace,
            "name": task.name,
            "uid": task.uid,
            "labels": dict(labels or {}),
        },
        "run": run,
        "spec": dict(spec),
        "inline": dict(inline or {}),
        "buckets": buckets,
        "chunkSize": int(chunk_size),
        "stage": "audience",
        "control": {
            "state": "Started",
            "cancelInflight": False,
            "ratePerSecond": float(
                rate_per_second if rate_per_second is not None else spec["rate"]["perSecond"]
            ),
        },
        "failure": None,
        "created": now,
        "audienceDoneAt": None,
        "doneAt": None,
    }
    return RunPlan(run_doc=doc, splits=audience_splits(run_id, spec))
