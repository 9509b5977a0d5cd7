"""The pure parts of `kubectl push`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pushtask.actions import progress_line
from pushtask.cli import (
    completions,
    main,
    status_line,
    task_rows,
    validate_documents,
)
from pushtask.taskapi import api_message

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


def test_api_errors_are_one_line_naming_the_verb_and_resource() -> None:
    body = '{"message": "pushtasks.pushtask.dev \\"t\\" is forbidden: User \\"bob\\" cannot patch"}'
    line = api_message(403, body, "patch", 'pushtasks.pushtask.dev "t"', "shop")
    assert line.startswith(
        'forbidden: you may not patch pushtasks.pushtask.dev "t" in namespace shop'
    )
    missing = '{"message": "not found", "details": {"name": "t", "kind": "pushtasks"}}'
    assert api_message(404, missing, "get", 'pushtask "t"', "shop") == (
        'pushtask "t" not found in namespace shop'
    )
    no_crd = '{"message": "the server could not find the requested resource", "details": {}}'
    assert "CRD (pushtasks.pushtask.dev) is not installed" in api_message(
        404, no_crd, "list", "pushtasks", "shop"
    )
    assert "HTTP 500" in api_message(500, "not json", "get", "x", "ns")


def test_the_table_lists_namespaces_only_with_all_namespaces() -> None:
    one = {**task({"phase": "Started"}), "metadata": {"name": "t", "namespace": "shop"}}
    assert task_rows([one], False).splitlines()[0].startswith("NAME")
    lines = task_rows([one], True).splitlines()
    assert lines[0].startswith("NAMESPACE") and lines[1].startswith("shop")


def test_completion_offers_commands_then_task_names_then_tiers() -> None:
    names = lambda: ["spring-sale", "summer"]  # noqa: E731
    assert completions(["re"], names) == ["resume", "restart", "recipient"]
    assert completions(["pause", "sp"], names) == ["spring-sale"]
    assert completions(["-n", "shop", "status", ""], names) == ["spring-sale", "summer"]
    assert completions(["degrade", "l"], names) == ["low"]
    assert completions(["pause", "spring-sale", ""], names) == []
    assert "--all-namespaces" in completions(["list", "--a"], names)


def test_examples_validate(capsys: pytest.CaptureFixture[str]) -> None:
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))
    assert examples
    assert main(["validate", "--local", *examples]) == 0
    assert "valid" in capsys.readouterr().out


def test_a_bad_manifest_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "webhook-campaign.yaml").read_text())
    doc["spec"]["workers"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert main(["validate", "--local", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "spec.workers" in err and doc["metadata"]["name"] in err


def test_other_kinds_in_a_file_are_ignored() -> None:
    assert validate_documents([{"kind": "ConfigMap", "data": {}}, None], "f.yaml") == []


def test_the_text_bar_for_pipes() -> None:
    p = progress_line(
        task({"phase": "Started", "run": 1, "counts": {"audience": 200, "sent": 50}, "rate": 9})
    )
    line = status_line(p, width=10)
    assert line.startswith("t  [##--------]  25%  50/200  9/s  eta -  Started  run 1")
