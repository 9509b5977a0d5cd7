"""The pure parts of `kubectl push`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pushtask_client.actions import progress_line
from pushtask_client.cli import (
    DEFAULT_DATABASE,
    DEFAULT_TIERS,
    StoreSource,
    completions,
    list_output,
    main,
    missing_run,
    override_note,
    override_of,
    override_refusal,
    parser,
    recipient_lines,
    redacted,
    resolve_flags,
    run_refusal,
    split_words,
    status_line,
    task_rows,
    tier_names,
    uri_database,
    validate_documents,
    watch_lines,
    with_database,
)
from pushtask_client.taskapi import api_message

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


def test_status_shows_clicks_and_conversions_of_a_tracked_run_only() -> None:
    tracked = {"phase": "Finished", "run": 1, "counts": {"audience": 200, "sent": 200},
               "clicks": 12, "clickers": 9, "clickThrough": "4.5%"}  # fmt: skip
    line = status_line(progress_line(task(tracked)), width=10)
    assert "clicks 12 (4.5%)" in line
    converting = {**tracked, "conversions": [{"event": "purchase", "count": 3, "rate": "1.5%"}]}
    assert "clicks 12 (4.5%)  purchase 3 (1.5%)" in status_line(progress_line(task(converting)))
    untracked = {"phase": "Finished", "run": 1, "counts": {"audience": 200, "sent": 200}}
    assert "clicks" not in status_line(progress_line(task(untracked)), width=10)


def test_status_shows_the_users_left_out_of_the_audience_when_there_are_any() -> None:
    counts = {"audience": 200, "sent": 200, "excluded": 750000, "duplicates": 0}
    capped = {"phase": "Finished", "run": 1, "counts": counts}
    line = status_line(progress_line(task(capped)), width=10)
    assert "workers 0/0  excluded 750000" in line and "duplicates" not in line
    counts.update(excluded=0, duplicates=12)
    line = status_line(progress_line(task(capped)), width=10)
    assert "duplicates 12" in line and "excluded" not in line
    plain = {"phase": "Finished", "run": 1, "counts": {"audience": 200, "sent": 200}}
    assert status_line(progress_line(task(plain)), width=10).endswith("workers 0/0")


def test_recipient_shows_the_links_clicked_and_conversions_when_tracked() -> None:
    from datetime import UTC, datetime

    from pushtask.records import RecipientState

    state = RecipientState(
        "ns.t.1.abcd", "u1", "sent", 1, None, datetime(2026, 1, 1, tzinfo=UTC), "w", "c/0", 3, None
    )
    lines = recipient_lines(state, 1, "pushtask", "--mongo-uri", [0, 2])
    assert "clicked:   #0, #2" in lines
    assert "clicked:   none" in recipient_lines(state, 1, "pushtask", "--mongo-uri", [])
    assert not [x for x in recipient_lines(state, 1, "db", "v") if x.startswith("clicked")]
    both = recipient_lines(state, 1, "db", "v", [], ["purchase", "signup"])
    assert "converted: purchase, signup" in both
    assert not [x for x in recipient_lines(state, 1, "db", "v") if x.startswith("converted")]


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
    tiers = lambda: ["bronze", "gold"]  # noqa: E731  (what the operator is configured with)
    assert completions(["re"], names, tiers) == ["resume", "restart", "recipient"]
    assert completions(["pause", "sp"], names, tiers) == ["spring-sale"]
    assert completions(["-n", "shop", "status", ""], names, tiers) == ["spring-sale", "summer"]
    assert completions(["--namespace=shop", "events", ""], names, tiers) == names()
    assert completions(["degrade", "g"], names, tiers) == ["gold"]
    assert completions(["undegrade", "--configmap", "x", ""], names, tiers) == tiers()
    assert completions(["pause", "spring-sale", ""], names, tiers) == []
    assert "--all-namespaces" in completions(["list", "--a"], names, tiers)
    # Only the flags the command takes, beside kubectl's own.
    assert completions(["pause", "--"], names, tiers) == [
        "--namespace",
        "--context",
        "--kubeconfig",
    ]
    assert "--once" in completions(["status", "x", "--o"], names, tiers)
    assert "--once" not in completions(["list", "--o"], names, tiers)
    # A flag's value: the formats of the command; nothing (no task names) for a namespace.
    assert completions(["status", "x", "-o", ""], names, tiers) == ["bar", "json", "yaml"]
    assert completions(["list", "-o", "j"], names, tiers) == ["json"]
    assert completions(["degrade", "low", "--mode", ""], names, tiers) == ["graceful", "immediate"]
    assert completions(["pause", "-n", ""], names, tiers) == []


def test_completion_reads_flags_wherever_they_are() -> None:
    words = ["-n", "a", "recipient", "--context=c", "t", "-nshop", "--kubeconfig", "k", "u"]
    assert split_words(words) == (
        ["recipient", "t", "u"],
        {"--namespace": "shop", "--context": "c", "--kubeconfig": "k"},
        None,
    )
    assert split_words(["degrade", "--release-namespace"])[2] == "--release-namespace"


@pytest.mark.parametrize(
    ("argv", "namespace", "command"),
    [
        (["recipient", "spring-sale", "u17", "-n", "pushtask-demo"], "pushtask-demo", "recipient"),
        (["-n", "pushtask-demo", "recipient", "spring-sale", "u17"], "pushtask-demo", "recipient"),
        (["recipient", "-n", "pushtask-demo", "spring-sale", "u17"], "pushtask-demo", "recipient"),
        (["pause", "spring-sale", "--namespace=shop"], "shop", "pause"),
        (["-n", "first", "scale", "t", "3", "-n", "second"], "second", "scale"),  # the last wins
        (["validate", "f.yaml", "-n", "shop"], "shop", "validate"),
    ],
)
def test_kubectls_flags_go_before_or_after_the_command(
    argv: list[str], namespace: str, command: str
) -> None:
    args = parser().parse_args(argv)
    assert args.command == command
    assert resolve_flags(command, vars(args)).namespace == namespace


def test_list_flags_anywhere_and_their_defaults() -> None:
    def flags(*argv: str) -> tuple[object, ...]:
        args = parser().parse_args(argv)
        f = resolve_flags(args.command, vars(args))
        return (f.all_namespaces, f.output, f.watch, f.context, f.kubeconfig)

    assert flags("list") == (False, "table", False, None, None)
    assert flags("-A", "list") == flags("list", "-A") == (True, "table", False, None, None)
    assert flags("-o", "json", "get", "-w") == (False, "json", True, None, None)
    assert flags("get", "--context", "c", "-ojson", "--kubeconfig=k") == (
        False, "json", False, "c", "k",
    )  # fmt: skip
    assert flags("status", "t") == (False, "bar", False, None, None)
    assert flags("status", "t", "-o", "yaml") == (False, "yaml", False, None, None)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["pause", "t", "-A"], "-A/--all-namespaces: pause works on one namespace"),
        (["-A", "recipient", "t", "u"], "-A/--all-namespaces: recipient works on one namespace"),
        (["events", "t", "-w"], "-w/--watch: only list, get and status follow changes"),
        (["status", "t", "-o", "table"], "-o table: status prints bar, json, yaml"),
        (["list", "-o", "wide"], "-o wide: list prints table, json, yaml"),
        (["pause", "t", "-o", "json"], "-o json: pause has no output formats"),
    ],
)
def test_a_flag_the_command_does_not_take_is_a_usage_error(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(argv)  # refused before any cluster is asked
    assert exit.value.code == 2
    assert said in capsys.readouterr().err


def test_list_as_json_and_yaml() -> None:
    one = {**task({"phase": "Started"}), "metadata": {"name": "t", "namespace": "shop"}}
    assert [t["name"] for t in json.loads(list_output([one], "json", "shop"))] == ["t"]
    assert yaml.safe_load(list_output([one], "yaml", "shop"))[0]["phase"] == "Started"
    assert list_output([], "table", "shop") == "no PushTasks in namespace shop"
    assert list_output([], "table", None) == "no PushTasks in any namespace"


def watched(name: str, phase: str, sent: int = 0, ns: str = "shop") -> dict:
    status = {"phase": phase, "run": 1, "counts": {"audience": 10, "sent": sent}}
    return {"metadata": {"name": name, "namespace": ns}, "status": status}


def test_a_watch_prints_a_line_per_change_and_one_for_a_deletion() -> None:
    shown: dict[tuple[str, str], str] = {}
    render = lambda p: f"{p['name']} {p['phase']} {p['sent']}"  # noqa: E731
    a, b = watched("a", "Started"), watched("b", "Ready")
    assert watch_lines(shown, "SYNC", [a, b], render) == ["a Started 0", "b Ready 0"]
    # The operator writes status about every 3 s: the same numbers print nothing.
    assert watch_lines(shown, "MODIFIED", watched("a", "Started"), render) == []
    assert watch_lines(shown, "MODIFIED", watched("a", "Started", 4), render) == ["a Started 4"]
    assert watch_lines(shown, "ADDED", watched("c", "Ready"), render) == ["c Ready 0"]
    assert watch_lines(shown, "DELETED", watched("c", "Ready"), render) == ["c Deleted 0"]
    # The watch expired and the list was read again: b went meanwhile, a moved on.
    lines = watch_lines(shown, "SYNC", [watched("a", "Finished", 10)], render)
    assert lines == ["a Finished 10", "b Deleted 0"]
    assert set(shown) == {("shop", "a")}


def test_tiers_are_read_as_the_operator_reads_them() -> None:
    from pushtask_operator import settings

    assert DEFAULT_TIERS == tuple(settings.DEFAULT_TIERS)
    values = yaml.safe_load((ROOT / "charts" / "pushtask" / "values.yaml").read_text())
    for raw in (
        "",
        "null",
        "{}",
        json.dumps(values["tiers"]),  # what the chart renders into PUSHTASK_TIERS
        '{"bronze": [0, 499], "gold": [500, 1000]}',
        "bronze=0-499, gold=500-1000",
    ):
        assert tier_names(raw) == list(settings.from_env({"PUSHTASK_TIERS": raw}).tiers), raw
    assert tier_names('{"bronze": [0, 499], "gold": [500, 1000]}') == ["bronze", "gold"]


def test_a_mongodb_uris_database() -> None:
    assert uri_database("mongodb://127.0.0.1:27030/") is None  # devstack env's
    assert uri_database("mongodb://127.0.0.1:27030") is None
    assert uri_database("mongodb://h:1/pushtask_demo") == "pushtask_demo"
    assert uri_database("mongodb://u:p@h1,h2/db%2Dx?replicaSet=rs") == "db-x"
    assert uri_database("mongodb://h/?tls=true") is None
    assert with_database("mongodb://127.0.0.1:27030/", "d") == "mongodb://127.0.0.1:27030/d"
    assert with_database("mongodb://h/?tls=true", "d") == "mongodb://h/d?tls=true"
    assert redacted("mongodb://u:secret@h/d") == "mongodb://u:***@h/d"
    assert redacted("mongodb://h/d") == "mongodb://h/d"
    from pushtask.store import DEFAULT_DB

    assert DEFAULT_DATABASE == DEFAULT_DB


SECRET = ("mongodb://mongo.pushtask.svc:27017/pushtask_demo", 'secret "pushtask-mongodb" key "uri"')


def test_a_named_store_must_name_its_database() -> None:
    """The bug report: devstack's PUSHTASK_MONGO_URI names no database, so the plugin read
    `pushtask` while the demo's task lives in `pushtask_demo`."""
    env = override_of(None, {"PUSHTASK_MONGO_URI": "mongodb://127.0.0.1:27030/"})
    assert env == StoreSource("mongodb://127.0.0.1:27030/", "PUSHTASK_MONGO_URI", True)
    said = override_refusal(env, "pushtask/spring-sale", SECRET)
    assert said == (
        "PUSHTASK_MONGO_URI mongodb://127.0.0.1:27030/ names no database, so it would be read "
        "in 'pushtask' whatever the task uses; pushtask/spring-sale's workers use database "
        '\'pushtask_demo\' (secret "pushtask-mongodb" key "uri"): say '
        "mongodb://127.0.0.1:27030/pushtask_demo, or unset PUSHTASK_MONGO_URI to read through "
        "the workers' Secret"
    )
    flag = override_of("mongodb://u:pw@h/", {"PUSHTASK_MONGO_URI": "mongodb://other/x"})
    assert flag is not None and flag.via == "--mongo-uri"
    said = override_refusal(flag, "pushtask/t", None) or ""
    assert "pw" not in said and "leave out --mongo-uri" in said and "DATABASE" in said
    named = StoreSource("mongodb://127.0.0.1:27030/pushtask_demo", "--mongo-uri", True)
    assert override_refusal(named, "pushtask/t", SECRET) is None
    assert override_note(named, "pushtask/t", SECRET) is None
    other = StoreSource("mongodb://127.0.0.1:27030/pushtask", "--mongo-uri", True)
    assert override_note(other, "pushtask/t", SECRET) == (
        "note: reading database 'pushtask' (--mongo-uri); pushtask/t's workers use 'pushtask_demo'"
    )
    assert override_of(None, {}) is None


def test_a_run_not_in_the_store_is_pruned_or_absent() -> None:
    secret = StoreSource(*SECRET, override=False)
    named = StoreSource("mongodb://h/pushtask", "PUSHTASK_MONGO_URI", True)
    pruned = missing_run("pushtask/t", 1, 5, True, "pushtask_demo", secret)
    assert pruned.startswith(
        "run 1 of pushtask/t is no longer in database 'pushtask_demo' (secret \"pushtask-mongodb\""
    )
    assert "pruned by retention" in pruned and "current run 5 is there" in pruned
    absent = missing_run("pushtask/t", 1, 1, False, "pushtask", named)
    assert absent.startswith(
        "run 1 of pushtask/t, its current run, is not in database 'pushtask' (PUSHTASK_MONGO_URI)"
    )
    assert "pruned" not in absent and "Without PUSHTASK_MONGO_URI" in absent
    gone = missing_run("pushtask/t", 2, 5, False, "pushtask_demo", secret)
    assert gone.startswith("neither run 2 of pushtask/t nor its current run 5 is in database")
    assert "the database its workers use" in gone and "pruned" not in gone
    assert run_refusal("pushtask/t", 6, 5) == "pushtask/t has no run 6: its current run is 5"
    assert run_refusal("pushtask/t", 0, 5) == "--run 0: runs are numbered from 1"
    assert run_refusal("pushtask/t", 5, 5) is None


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
