"""Batch sizing: about two seconds of sending, at the rate share or the measured speed."""

from __future__ import annotations

import pytest

from pushtask_worker.delivery import FIRST_BATCH, MIN_BATCH, Pace, batch_size


def test_first_batch_is_small_while_the_sending_speed_is_unknown() -> None:
    assert batch_size(5000) == FIRST_BATCH
    assert batch_size(50) == 50


@pytest.mark.parametrize(
    ("rate", "speed", "expected"),
    [
        (100.0, None, 200),  # the rate share alone
        (None, 1500.0, 3000),  # unlimited rate: the measured sending speed
        (1000.0, 300.0, 600),  # a slow receiver: the lower of the two
        (300.0, 1000.0, 600),
        (1e6, 1e6, 5000),  # capped by the largest batch
        (1.0, None, MIN_BATCH),  # never below the smallest
    ],
)
def test_two_seconds_of_the_slower_speed(
    rate: float | None, speed: float | None, expected: int
) -> None:
    assert batch_size(5000, rate_share=rate, send_speed=speed) == expected


def test_pace_smooths_batches_ignores_empty_ones_and_sizes_the_next() -> None:
    pace = Pace(weight=0.5)
    pace.observe(0, 1.0)
    pace.observe(10, 0.0)
    assert pace.per_second is None
    assert pace.batch_size(5000, None) == FIRST_BATCH
    pace.observe(1000, 1.0)
    assert pace.per_second == 1000
    pace.observe(3000, 1.0)
    assert pace.per_second == 2000
    assert pace.batch_size(5000, None) == 4000
    assert pace.batch_size(5000, 100.0) == 200
