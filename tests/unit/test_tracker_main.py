"""pushtask-tracker's settings from its environment."""

from __future__ import annotations

import pytest

from pushtask_tracker.main import keys_from_env, main


def test_keys_current_first_then_the_previous_one() -> None:
    env = {"PUSHTASK_TRACKER_KEY": "new\n", "PUSHTASK_TRACKER_KEY_PREVIOUS": " old "}
    assert keys_from_env(env) == [b"new", b"old"]
    assert keys_from_env({"PUSHTASK_TRACKER_KEY": "new"}) == [b"new"]
    assert keys_from_env({"PUSHTASK_TRACKER_KEY": "  "}) == []


def test_it_refuses_to_start_without_a_key_or_a_store(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PUSHTASK_TRACKER_KEY", raising=False)
    monkeypatch.setenv("PUSHTASK_MONGO_URI", "mongodb://127.0.0.1:1/")
    assert main(["--port", "0"]) == 1
    assert "PUSHTASK_TRACKER_KEY and PUSHTASK_MONGO_URI are required" in capsys.readouterr().err
