"""What a person may do to a PushTask, and what the state machine refuses."""

from __future__ import annotations

from typing import Any

import pytest

from pushtask_client.actions import Refused, plan, run_over


def task(phase: str | None, state: str = "Started", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "sale", "resourceVersion": "42"},
        "spec": {"state": state, "run": 3, "workers": 2, **spec},
        "status": {"phase": phase} if phase else {},
    }


@pytest.mark.parametrize(
    ("action", "phase", "state", "patch", "what"),
    [
        ("pause", "Started", "Started", {"state": "Paused"}, "spec.state Started -> Paused"),
        ("pause", "Ready", "Started", {"state": "Paused"}, "spec.state Started -> Paused"),
        ("resume", "Paused", "Paused", {"state": "Started"}, "spec.state Paused -> Started"),
        ("stop", "Started", "Started", {"state": "Stopped"}, "spec.state Started -> Stopped"),
        # A finished cron task: stop ends its firings.
        ("stop", "Finished", "Started", {"state": "Stopped"}, "spec.state Started -> Stopped"),
        ("restart", "Finished", "Started", {"state": "Started", "run": 4},
         "spec.run 3 -> 4 (a new run)"),
        ("restart", "Stopped", "Stopped", {"state": "Started", "run": 4},
         "spec.run 3 -> 4 (a new run)"),
    ],
)  # fmt: skip
def test_each_action_is_one_versioned_patch(
    action: str, phase: str, state: str, patch: dict[str, Any], what: str
) -> None:
    change = plan(action, task(phase, state))
    assert change is not None
    assert change.patch == {"metadata": {"resourceVersion": "42"}, "spec": patch}
    assert change.what == what


def test_what_already_is_so_changes_nothing() -> None:
    assert plan("pause", task("Paused", "Paused")) is None
    assert plan("resume", task("Started")) is None
    assert plan("stop", task("Stopped", "Stopped")) is None
    assert plan("scale", task("Started"), 2) is None


@pytest.mark.parametrize(
    ("action", "phase", "words"),
    [
        ("pause", "Finished", "sale is Finished: there is no run to pause (restart starts one)"),
        ("resume", "Stopped", "resume continues a paused run; restart starts a new one"),
        ("resume", "Failed", "sale is Failed"),
    ],
)
def test_the_state_machine_refuses_what_cannot_happen(action: str, phase: str, words: str) -> None:
    with pytest.raises(Refused, match=words.replace("(", r"\(").replace(")", r"\)")):
        plan(action, task(phase))


def test_scale() -> None:
    change = plan("scale", task("Started"), 8)
    assert change is not None and change.patch["spec"] == {"workers": 8}
    assert change.what == "spec.workers 2 -> 8"
    with pytest.raises(Refused, match="at least 1"):
        plan("scale", task("Started"), 0)


def test_a_run_is_over_when_terminal_or_a_cron_task_waits_again() -> None:
    assert run_over(task("Finished")) and run_over(task("Failed"))
    assert not run_over(task("Started")) and not run_over(task("Ready"))
    cron = task("Ready")
    cron["status"]["reason"] = "AwaitingNextFiring"
    assert run_over(cron)


def test_what_a_lookup_says_instead_of_a_record() -> None:
    from pushtask_client.actions import lookup_note

    assert lookup_note(True, "delivery", 3) is None
    assert lookup_note(False, "done", 3) == "not in the audience of run 3"
    assert lookup_note(False, "seal", 3) == "run 3's audience is still being built; ask again soon"
    assert lookup_note(False, None, 3) == "run 3 is not in the store"
