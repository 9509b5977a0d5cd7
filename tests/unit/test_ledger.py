"""The chunked ledger's pure parts: staging, bucket grouping, sealing, chunks, the window."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pushtask import ledger
from pushtask.leases import EPOCH

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def staged(
    rows: Sequence[tuple[str, dict[str, Any] | None, datetime | None]],
    *,
    exclude: bool = False,
    buckets: int = 8,
    split: str = "r/a/0",
    seq: int = 0,
) -> list[dict]:
    flush = ledger.Flush(buckets, exclude=exclude)
    for user, attrs, due in rows:
        flush.add(user, attrs, due)
    return flush.documents("r", split, seq)


def test_buckets_are_stable_and_in_range() -> None:
    seen = {ledger.bucket_of(f"u{i}", 7) for i in range(1000)}
    assert seen == set(range(7))
    assert ledger.bucket_of("alice", 256) == ledger.bucket_of("alice", 256)


def test_a_flush_is_one_document_per_bucket_with_deterministic_ids() -> None:
    rows = [(f"u{i}", {"n": i} if i % 2 else None, None) for i in range(100)]
    docs = staged(rows)
    again = staged(rows)
    assert [d["_id"] for d in docs] == [d["_id"] for d in again]
    assert len({d["_id"] for d in docs}) == len(docs) == len({d["bucket"] for d in docs})
    assert sum(d["n"] for d in docs) == 100
    for d in docs:
        assert d["_id"] == ledger.staging_id("r/a/0", 0, d["bucket"])
        assert all(ledger.bucket_of(r["u"], 8) == d["bucket"] for r in d["rows"])
    # Rows keep only what they carry: no empty attributes, no epoch due time.
    by_user = {r["u"]: r for d in docs for r in d["rows"]}
    assert "a" not in by_user["u0"] and by_user["u1"]["a"] == {"n": 1}
    assert "d" not in by_user["u0"]


def test_exclusion_rows_carry_only_the_user() -> None:
    docs = staged([("x", {"n": 1}, T0)], exclude=True)
    assert docs[0]["exclude"] is True and docs[0]["rows"] == [{"u": "x"}]


@pytest.mark.parametrize(
    ("sizes", "buckets", "target", "maximum", "expected"),
    [
        ({}, 4, 10, 20, [(0, 4)]),  # nothing staged: one empty shard covers every bucket
        ({0: 3, 1: 3, 2: 3, 3: 3}, 4, 100, 200, [(0, 4)]),  # small: one shard
        ({0: 6, 1: 6, 2: 6, 3: 6}, 4, 10, 200, [(0, 2), (2, 4)]),  # closes at the target
        ({0: 5, 1: 30, 2: 5}, 3, 100, 20, [(0, 1), (1, 2), (2, 3)]),  # never past the max
        ({0: 10, 1: 0, 2: 0}, 3, 10, 200, [(0, 3)]),  # an empty tail joins the last shard
    ],
)
def test_buckets_group_into_contiguous_shards(
    sizes: dict[int, int],
    buckets: int,
    target: int,
    maximum: int,
    expected: list[tuple[int, int]],
) -> None:
    got = ledger.group_buckets(sizes, buckets, target=target, maximum=maximum)
    assert got == expected


def test_grouping_covers_every_bucket_once_at_scale() -> None:
    sizes = {b: 1_000 + 37 * b for b in range(256)}
    ranges = ledger.group_buckets(sizes, 256)
    assert ranges[0][0] == 0 and ranges[-1][1] == 256
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    totals = [sum(sizes[b] for b in range(lo, hi)) for lo, hi in ranges]
    assert max(totals) <= ledger.SHARD_MAX
    assert all(t >= ledger.SHARD_TARGET for t in totals[:-1])


def test_seal_keeps_each_user_once_drops_exclusions_and_orders_by_due_then_user() -> None:
    first = staged([("b", {"v": 1}, None), ("a", None, T0), ("c", None, None)], seq=0)
    # An overlapping source and a repeat inside it: the first row read back wins.
    second = staged([("b", {"v": 2}, None), ("b", None, None), ("d", None, None)], split="r/a/1")
    excluded = staged([("c", None, None), ("nobody", None, None)], exclude=True, split="r/a/2")
    docs = sorted(first + second + excluded, key=lambda d: d["_id"])
    sealed = ledger.seal(docs)
    assert [r.user for r in sealed.recipients] == ["b", "d", "a"]  # epoch first, then T0
    assert sealed.recipients[0].attrs == {"v": 1}
    assert sealed.duplicates == 2 and sealed.excluded == 1


def test_seal_is_deterministic_whatever_the_order_rows_were_staged_in() -> None:
    a = staged([(f"u{i}", {"i": i}, None) for i in range(50)], split="r/a/0")
    b = staged([(f"u{i}", {"i": -i}, None) for i in range(25, 75)], split="r/a/1")
    docs = sorted(a + b, key=lambda d: d["_id"])
    assert ledger.seal(docs) == ledger.seal(list(docs))
    chunks = ledger.cut_chunks("r", 0, ledger.seal(docs).recipients, size=10)
    again = ledger.cut_chunks(
        "r", 0, ledger.seal(sorted(docs, key=lambda d: d["_id"])).recipients, size=10
    )
    assert chunks == again


def test_chunks_are_cut_by_count_and_by_bytes() -> None:
    recipients = [ledger.Recipient(f"u{i:03d}", None, EPOCH) for i in range(25)]
    chunks = ledger.cut_chunks("r", 3, recipients, size=10)
    assert [c["size"] for c in chunks] == [10, 10, 5]
    assert [c["_id"] for c in chunks] == [ledger.chunk_id("r", 3, n) for n in range(3)]
    assert chunks[1]["users"][0] == "u010"
    assert "attrs" not in chunks[0] and "dues" not in chunks[0]  # nothing to carry
    big = [ledger.Recipient(f"u{i}", {"blob": "x" * 1000}, EPOCH) for i in range(10)]
    by_bytes = ledger.cut_chunks("r", 0, big, size=100, max_bytes=3_500)
    assert [c["size"] for c in by_bytes] == [3, 3, 3, 1]
    assert by_bytes[0]["attrs"][0] == {"blob": "x" * 1000}


def test_a_chunk_is_due_at_its_first_recipient_and_keeps_each_due_time() -> None:
    dues = [T0 + timedelta(seconds=s) for s in (0, 5, 9)]
    chunk = ledger.cut_chunks(
        "r", 0, [ledger.Recipient(f"u{i}", None, d) for i, d in enumerate(dues)]
    )[0]
    assert chunk["due"] == T0 and chunk["dues"] == dues
    assert ledger.first_not_due(chunk["dues"], 0, 3, T0 + timedelta(seconds=5)) == 2
    assert ledger.first_not_due(None, 0, 3, T0) == 3


@pytest.mark.parametrize(
    ("hi", "doubt", "window", "limit", "expected"),
    [
        (0, 0, 64, 1000, 64),  # a fresh chunk opens one window
        (64, 40, 64, 1000, 88),  # 24 results recorded: 24 more may start
        (64, 64, 64, 1000, 64),  # nothing recorded: no room
        (990, 0, 64, 1000, 1000),  # never past the chunk's end
        (10, 0, 64, 12, 12),  # nor past a recipient not due yet
        (10, 70, 64, 1000, 10),  # more in doubt than the window (settled by the next holder)
    ],
)
def test_the_window_bounds_what_a_crash_leaves_in_doubt(
    hi: int, doubt: int, window: int, limit: int, expected: int
) -> None:
    new = ledger.extend_to(hi, doubt, window, limit)
    assert new == expected
    assert new - hi + doubt <= max(window, doubt)


def test_doubt_and_hand_backs_of_a_chunk() -> None:
    doc = {"hi": 5, "res": {"0": {"s": "sent"}, "2": {"s": "handed back"}, "3": {"s": "failed"}}}
    assert ledger.in_doubt(doc) == [1, 4]
    assert ledger.handed_back(doc) == [2]
    assert ledger.in_doubt({"hi": 0, "res": {}}) == []


def test_a_hand_back_recorded_by_version_0_1_0_reads_as_one() -> None:
    """0.1.0 stored a hand-back as "pending": read the same, counted nowhere, sent again."""
    old = {"hi": 3, "res": {"1": {"s": "pending", "n": 2, "e": "handed back at shutdown"}}}
    assert ledger.handed_back(old) == [1]
    assert ledger.recorded(old) == {1: "handed back"}
    assert ledger.in_doubt(old) == [0, 2]
    entry = ledger.result_at(old, 1)
    assert entry is not None and entry["s"] == "handed back" and entry["n"] == 2
    assert ledger.tally({"sent": 4}, ledger.recorded(old).values()) == {"sent": 4}


def test_first_attempt_sends_are_one_list_per_write() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    doc = {
        "hi": 8,
        "ok": {
            ledger.ok_key(3, 0): {"t": at, "w": "w-a", "p": [0, 1, 4]},
            ledger.ok_key(4, 5): {"t": at, "w": "w-b", "p": [5]},
        },
        "res": {"2": ledger.result_entry("failed", 3, at, "w-a", "HTTP 400")},
    }
    assert ledger.recorded(doc) == {0: "sent", 1: "sent", 4: "sent", 5: "sent", 2: "failed"}
    assert ledger.in_doubt(doc) == [3, 6, 7]
    assert ledger.result_at(doc, 4) == {"s": "sent", "n": 1, "t": at, "w": "w-a"}
    assert ledger.result_at(doc, 5) == {"s": "sent", "n": 1, "t": at, "w": "w-b"}
    assert ledger.result_at(doc, 2) == {"s": "failed", "n": 3, "t": at, "w": "w-a", "e": "HTTP 400"}
    assert ledger.result_at(doc, 3) is None
    # A chunk written before `ok` existed reads the same way.
    assert ledger.in_doubt({"hi": 2, "res": {"0": {"s": "sent"}}}) == [1]


def test_flushes_grow_with_the_bucket_count() -> None:
    assert ledger.flush_rows(16) == ledger.flush_rows(100) == ledger.FLUSH_ROWS
    assert ledger.flush_rows(1024) == 200 * 1024  # still about 200 rows a staging document


def test_a_timed_audience_gets_no_more_shards_than_workers() -> None:
    assert ledger.shard_target(180_000, 2, timed=False) == ledger.SHARD_TARGET
    assert ledger.shard_target(180_000, 2, timed=True) == 90_000
    assert ledger.shard_target(10_000, 4, timed=True) == ledger.SHARD_TARGET  # small anyway
    # Memory first: a shard never grows past SHARD_MAX, whatever the worker count.
    assert ledger.shard_target(1_000_000, 2, timed=True) == ledger.SHARD_MAX
    sizes = dict.fromkeys(range(256), 180_000 // 256)
    target = ledger.shard_target(sum(sizes.values()), 2, timed=True)
    assert len(ledger.group_buckets(sizes, 256, target=target)) == 2


def test_failures_are_read_from_res_in_position_order() -> None:
    doc = {
        "ok": {"3_0": {"p": [0, 1]}},
        "res": {
            "7": {"s": "failed", "e": "HTTP 410 Gone"},
            "2": {"s": "failed", "e": "UNREGISTERED"},
            "4": {"s": "handed back", "e": "handed back"},
            "5": {"s": "sent", "n": 2},
        },
    }
    assert ledger.failures(doc) == [(2, "UNREGISTERED"), (7, "HTTP 410 Gone")]
    assert ledger.failures({"ok": {"3_0": {"p": [0]}}}) == []


def test_a_send_window_never_lets_doubt_past_its_size() -> None:
    """The holder's bookkeeping: each write moves `hi` by what was recorded, no further."""
    mark = ledger.SendWindow(hi=0, size=64)
    assert mark.has_room()
    hi = mark.next_hi(0, limit=1000)  # the first write opens one window
    mark.moved(0, hi)
    assert (mark.hi, mark.doubt) == (64, 64) and not mark.has_room()
    hi = mark.next_hi(24, limit=1000)  # 24 results: 24 more may start
    mark.moved(24, hi)
    assert (mark.hi, mark.doubt) == (88, 64)
    hi = mark.next_hi(64, limit=100)  # everything recorded, but only 12 are due
    mark.moved(64, hi)
    assert (mark.hi, mark.doubt) == (100, 12) and mark.has_room()
