"""The pure parts of `kubectl push`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pushtask.cli import main, progress_line, state_patch, validate_documents

ROOT = Path(__file__).resolve().parents[2]


def task(status: dict | None = None, spec: dict | None = None) -> dict:
    return {"metadata": {"name": "t"}, "spec": spec or {"run": 2}, "status": status or {}}


def test_progress_counts_every_final_result_as_done() -> None:
    p = progress_line(
        task(
            {
                "phase": "Started",
                "run": 2,
                "counts": {"audience": 100, "sent": 60, "failed": 5, "skipped": 3, "unknown": 2},
                "rate": 12.5,
                "eta": "3s",
                "workers": {"live": 2, "desired": 3},
            }
        )
    )
    assert (p["done"], p["total"], p["sent"], p["failed"]) == (70, 100, 60, 5)
    assert (p["phase"], p["run"], p["workers"], p["eta"]) == ("Started", 2, "2/3", "3s")


def test_progress_of_a_task_without_status_yet() -> None:
    p = progress_line(task())
    assert (p["phase"], p["run"], p["done"], p["total"], p["workers"]) == ("-", 2, 0, 0, "0/0")


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("pause", {"spec": {"state": "Paused"}}),
        ("resume", {"spec": {"state": "Started"}}),
        ("stop", {"spec": {"state": "Stopped"}}),
        ("restart", {"spec": {"state": "Started", "run": 4}}),
    ],
)
def test_state_patches(action: str, expected: dict) -> None:
    assert state_patch(action, {"run": 3}) == expected


def test_unknown_action_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown action"):
        state_patch("explode", {})


def test_examples_validate(capsys: pytest.CaptureFixture[str]) -> None:
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))
    assert examples
    assert main(["validate", *examples]) == 0
    assert "valid" in capsys.readouterr().out


def test_a_bad_manifest_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "webhook-campaign.yaml").read_text())
    doc["spec"]["workers"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "spec.workers" in err and doc["metadata"]["name"] in err


def test_other_kinds_in_a_file_are_ignored() -> None:
    assert validate_documents([{"kind": "ConfigMap", "data": {}}, None], "f.yaml") == []
