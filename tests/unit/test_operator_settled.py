"""Which tasks the operator's wake-ups leave alone: a task at rest costs nothing a second."""

from __future__ import annotations

from typing import Any

import pytest

from pushtask.models import PushTaskSpec
from pushtask_operator.handlers import _settled


def spec(**fields: Any) -> PushTaskSpec:
    return PushTaskSpec.model_validate(
        {
            "audience": {"sources": [{"kind": "inline", "users": ["a"]}]},
            "message": {"webhook": {"url": "http://sink/hook"}, "template": {"body": "Hi"}},
            **fields,
        }
    )


META = {"name": "t", "namespace": "ns", "generation": 4}


def status(**fields: Any) -> dict[str, Any]:
    return {"phase": "Finished", "run": 1, "observedGeneration": 4, "workers": {}, **fields}


@pytest.mark.parametrize("phase", ["Finished", "Stopped", "Failed"])
def test_a_run_over_and_its_workers_gone_is_settled(phase: str) -> None:
    assert _settled(spec(), status(phase=phase), META)


@pytest.mark.parametrize("phase", ["Stopped", "Failed"])
@pytest.mark.parametrize("run", [None, 0])
def test_a_task_stopped_or_failed_before_its_first_run_is_settled(
    phase: str, run: int | None
) -> None:
    assert _settled(spec(state="Stopped"), status(phase=phase, run=run), META)


@pytest.mark.parametrize(
    ("the_spec", "the_status", "why"),
    [
        (spec(), status(phase="Started"), "a run under way"),
        (spec(), status(phase="Paused"), "paused: its run is not over"),
        (spec(), status(workers={"live": 1}), "workers still to see go"),
        (spec(), status(workers={"ready": 1}), "workers still to see go"),
        (spec(), status(observedGeneration=3), "a spec change not reconciled yet"),
        (spec(run=2), status(), "a raised run not started yet"),
        (spec(schedule={"cron": "0 9 * * *"}), status(), "a cron task waits for its firing"),
    ],
)
def test_what_is_not_settled(the_spec: PushTaskSpec, the_status: dict[str, Any], why: str) -> None:
    assert not _settled(the_spec, the_status, META), why
