"""`spec.rate.perSecond` at the receiver, second by second from the first send, on devstack:
at 1, 3 and 8 workers, across a pause and resume, and a scale-up mid-run.

The sink counts arrivals in whole seconds from the first one; no second may exceed the
rate by more than 10% (the last, partial second aside), and once the workers have joined
the rate is used (a run's tail included: the last worker holding work takes it all).

The sink runs as a process of its own, at a higher priority than the workers: a receiver
that stalls (a sink thread sharing this test's interpreter, on two loaded CPUs) records
the requests that queued meanwhile as a burst that no sender made.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.e2e.test_operator_e2e import (
    SINK_HOST,
    Env,
    configmap_audience,
    push_task,
    users,
    wait_for,
)
from tests.support.persecond import per_second, worst_window
from tests.support.sinkprocess import sink_process

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
# The issue's own measurement by hand: PUSHTASK_RATE_E2E_RATE=500 PUSHTASK_RATE_E2E_SECONDS=60
# (30,000 recipients).
RATE = float(os.environ.get("PUSHTASK_RATE_E2E_RATE", "300"))
SECONDS = float(os.environ.get("PUSHTASK_RATE_E2E_SECONDS", "12"))


def check_seconds(label: str, times: list[float], *, used: bool = True) -> list[int]:
    seconds = per_second(times)
    print(f"\n{label}: per second at the sink {seconds}; busiest sliding second "
          f"{worst_window(times)}")  # fmt: skip
    assert seconds, f"{label}: nothing arrived"
    assert max(seconds) <= RATE * 1.1, (label, seconds)
    if used and len(seconds) > 2:
        # After the first second (workers joining), the rate is used: no share left idle.
        middle = seconds[1:]
        # (0.8: on two loaded CPUs a starved worker does not make up its lost moments.)
        assert sum(middle) / len(middle) >= RATE * 0.8, (label, seconds)
    return seconds


@pytest.mark.parametrize("workers", [1, 3, 8])
def test_the_rate_holds_every_second_from_the_first_send(
    env: Env, tmp_path: Path, workers: int
) -> None:
    audience = users(int(RATE * SECONDS), "r")
    with sink_process(tmp_path, SINK_HOST) as sink:
        task = push_task("rated", sink.url, [], workers=workers, rate=RATE)
        task["spec"]["audience"] = configmap_audience(env, tmp_path, "rated", audience)
        env.apply(task)
        env.wait_phase("rated", "Finished", timeout=300)
        sink.assert_each_once(audience)
        check_seconds(f"{workers} workers", sink.arrivals())


def test_the_rate_holds_across_a_resume_and_a_scale_up(env: Env, tmp_path: Path) -> None:
    audience = users(int(RATE * 30), "s")
    with sink_process(tmp_path, SINK_HOST) as sink:
        task = push_task("resumed", sink.url, [], workers=3, rate=RATE)
        task["spec"]["audience"] = configmap_audience(env, tmp_path, "resumed", audience)
        env.apply(task)
        wait_for("sending under way", lambda: len(sink.arrivals()) > RATE * 4, 180)
        env.patch_spec("resumed", state="Paused")
        env.wait_phase("resumed", "Paused", 60)
        time.sleep(2)  # what was in flight at the pause arrives
        before = len(sink.arrivals())
        check_seconds("before the pause", sink.arrivals(), used=False)

        env.patch_spec("resumed", state="Started")
        wait_for("sending again", lambda: len(sink.arrivals()) > before + RATE * 4, 120)
        # A scale-up mid-run: five more workers join the three sending at the whole rate.
        env.kubectl("scale", "pushtasks.pushtask.dev/resumed", "--replicas=8")
        env.wait_phase("resumed", "Finished", timeout=300)
        sink.assert_each_once(audience)
        check_seconds("after the resume, through the scale-up", sorted(sink.arrivals())[before:])
