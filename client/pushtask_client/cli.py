"""`kubectl push`: the kubectl plugin for PushTasks (console script `kubectl-push`).

    kubectl push list [-A] [-o table|json|yaml] [-w]   tasks and their progress (alias: get)
    kubectl push status NAME [--once] [-o bar|json|yaml]  a live progress bar until the run ends
    kubectl push pause|resume|stop NAME        spec.state
    kubectl push restart NAME                  a new run (spec.run + 1)
    kubectl push scale NAME N                  spec.workers
    kubectl push recipient NAME USER [--run R] what happened to one user
    kubectl push events NAME                   the task's Events
    kubectl push degrade TIER [--mode M]       pause a priority tier at a peak (undegrade)
    kubectl push validate FILE...              the models' checks, then a server dry run
    kubectl push test NAME --to U[,U...] [--attrs FILE]  send the message to a few users,
                                               marked as a test, outside any run

Every action is one patch of the PushTask carrying the resourceVersion it was computed
from (retried on a conflict), and prints what it changed. Errors are one line on stderr:
exit 1 (refused, not found, forbidden, API error), 2 (usage). `test` exits 0 when every
recipient got the message, 1 when one did not, 2 when the message does not render with
the given attributes (nothing sent; each problem on stderr, as `validate` says them).
As with kubectl, the flags -n/--namespace, --context, --kubeconfig, -A, -o and -w go
before or after the command and its arguments, and KUBECONFIG works. Completion: kubectl
calls the `kubectl_complete-push` script installed beside this one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote

import yaml
from pydantic import ValidationError

from pushtask.models import KIND, PushTaskSpec, describe_errors
from pushtask.planning import TaskRef, run_id_for
from pushtask.records import RecipientState
from pushtask_client import actions, testsend
from pushtask_client.actions import Refused, progress_line
from pushtask_client.taskapi import MONGO_URI_ENV, Cluster, ClusterError, event_time

COMMANDS = (
    "list", "get", "status", "pause", "resume", "stop", "restart", "scale",
    "recipient", "events", "degrade", "undegrade", "validate", "test",
)  # fmt: skip
# The chart's defaults: release `pushtask` in namespace `pushtask`.
DEGRADE_NAMESPACE = os.environ.get("PUSHTASK_RELEASE_NAMESPACE", "pushtask")
DEGRADE_CONFIGMAP = os.environ.get("PUSHTASK_DEGRADE_CONFIGMAP", "pushtask-degrade")
# What each command can print with -o (the first is its default).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "list": ("table", "json", "yaml"),
    "get": ("table", "json", "yaml"),
    "status": ("bar", "json", "yaml"),
}
ALL_NAMESPACES = ("list", "get")
# -w: list/get print each change; status follows its run with or without it.
WATCHES = ("list", "get", "status")
# `list -w`: the least width of the columns whose values grow after the first listing.
WATCH_WIDTHS = {"PHASE": len("Finished"), "SENT": 7, "FAILED": 6, "TOTAL": 7, "RATE": 7, "ETA": 6}
# The operator's tiers when its PUSHTASK_TIERS is empty (operator settings.DEFAULT_TIERS).
DEFAULT_TIERS = ("low", "normal", "critical")
# Where the Store reads when the URI names no database (pushtask.store.DEFAULT_DB).
DEFAULT_DATABASE = "pushtask"


# `test`: the message does not render for these recipients, nothing was sent (distinct
# from 1, a send that failed).
TEST_NOT_SENT = 2


class CliError(Exception):
    """One line for stderr; exit status 1."""


# -- pure parts ---------------------------------------------------------------------------


def validate_documents(docs: Sequence[Any], source: str) -> list[str]:
    """Problems of the PushTask documents in one file, each naming the field."""
    problems: list[str] = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, Mapping) or doc.get("kind") != KIND:
            continue
        name = (doc.get("metadata") or {}).get("name", f"document {i}")
        try:
            PushTaskSpec.model_validate(doc.get("spec") or {})
        except ValidationError as error:
            problems += [f"{source}: {name}: {line}" for line in describe_errors(error, "spec")]
    return problems


def row_text(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "   ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def column_widths(rows: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = column_widths(rows)
    return "\n".join(row_text(r, widths) for r in rows)


def table_head(all_namespaces: bool) -> list[str]:
    head = ["NAME", "PHASE", "RUN", "SENT", "FAILED", "TOTAL", "RATE", "ETA", "WORKERS"]
    return (["NAMESPACE"] if all_namespaces else []) + head


def task_row(p: Mapping[str, Any], all_namespaces: bool) -> list[str]:
    row = [p["name"], p["phase"], str(p["run"]), str(p["sent"]), str(p["failed"]),
           str(p["total"]), f"{p['rate']:.0f}/s", p["eta"], p["workers"]]  # fmt: skip
    return ([p["namespace"]] if all_namespaces else []) + row


def task_rows(tasks: Sequence[Mapping[str, Any]], all_namespaces: bool) -> str:
    rows = [table_head(all_namespaces)]
    rows += [task_row(progress_line(t), all_namespaces) for t in tasks]
    return format_table(rows)


def list_output(tasks: Sequence[Mapping[str, Any]], output: str, ns: str | None) -> str:
    """What `list` prints (ns None: every namespace)."""
    if output == "json":
        return json.dumps([progress_line(t) for t in tasks], indent=2)
    if output == "yaml":
        return yaml.safe_dump([progress_line(t) for t in tasks], sort_keys=False).rstrip()
    if not tasks:
        return f"no PushTasks in {'any namespace' if ns is None else f'namespace {ns}'}"
    return task_rows(tasks, ns is None)


def watch_lines(
    shown: dict[tuple[str, str], str],
    kind: str,
    payload: Any,
    render: Callable[[Mapping[str, Any]], str],
) -> list[str]:
    """What one event of `list -w` prints, given the line each task shows now (`shown`,
    updated here): a task's line when it changed (a status written with the same numbers
    prints nothing), and a `Deleted` line for a task that went. A SYNC (the whole list,
    after a watch expired) also reports the tasks that went while no watch was open."""
    tasks = list(payload) if kind == "SYNC" else [payload]
    lines: list[str] = []
    listed: set[tuple[str, str]] = set()
    for task in tasks:
        p = progress_line(task)
        key = (p["namespace"], p["name"])
        listed.add(key)
        if kind == "DELETED":
            shown.pop(key, None)
            lines.append(render({**p, "phase": "Deleted"}))
            continue
        line = render(p)
        if shown.get(key) != line:
            shown[key] = line
            lines.append(line)
    if kind == "SYNC":
        for ns, name in sorted(set(shown) - listed):
            del shown[(ns, name)]
            gone = {"metadata": {"namespace": ns, "name": name}, "status": {"phase": "Deleted"}}
            lines.append(render(progress_line(gone)))
    return lines


def detail_of(p: Mapping[str, Any]) -> str:
    clicks = "" if p.get("clicks") is None else f"clicks {p['clicks']} ({p['clickThrough']})  "
    conversions = "".join(
        f"{c.get('event')} {c.get('count', 0)} ({c.get('rate', '')})  "
        for c in p.get("conversions") or []
    )
    left_out = "".join(f"{k} {p[k]}  " for k in ("excluded", "duplicates") if p.get(k))
    return (
        f"{p['rate']:.0f}/s  eta {p['eta']}  {p['phase']}  run {p['run']}  "
        f"workers {p['workers']}  {left_out}{clicks}{conversions}{p['message']}"
    ).rstrip()


def status_line(p: Mapping[str, Any], width: int = 30) -> str:
    """The progress bar as text, for a terminal that is not one (a pipe, CI logs)."""
    total, done = int(p["total"]), int(p["done"])
    share = done / total if total else 0.0
    filled = int(share * width)  # floor: the bar is full only when the run is
    bar = "#" * filled + "-" * (width - filled)
    return f"{p['name']}  [{bar}] {share:4.0%}  {done}/{total}  {detail_of(p)}"


def recipient_lines(
    state: Any,
    run: int,
    database: str,
    via: str,
    clicked: Sequence[int] | None = None,
    converted: Sequence[str] | None = None,
) -> list[str]:
    """`clicked`: the tracked links the user clicked, by index; `converted`: their
    conversion events (None: the run does not track them)."""
    at = state.at.isoformat() if state.at else "-"
    lines = [
        f"user:      {state.user}",
        f"run:       {run} ({state.run_id})",
        f"status:    {state.status}",
        f"attempts:  {state.attempts}",
        f"error:     {state.error or '-'}",
        f"time:      {at}",
        f"worker:    {state.worker or '-'}",
        f"chunk:     {state.chunk} #{state.position}",
    ]
    if clicked is not None:
        links = ", ".join(f"#{i}" for i in clicked) if clicked else "none"
        lines.append(f"clicked:   {links}")
    if converted is not None:
        lines.append(f"converted: {', '.join(converted) if converted else 'none'}")
    return [*lines, f"database:  {database} ({via})"]


@dataclass(frozen=True)
class StoreSource:
    """Where `recipient` reads the ledger, and how that was chosen (for the messages)."""

    uri: str
    via: str  # "--mongo-uri", "PUSHTASK_MONGO_URI", or 'secret "x" key "uri"'
    override: bool  # chosen by the person, not by the task's workers


def uri_database(uri: str) -> str | None:
    """The database a MongoDB URI names in its path (None: it names none and the store
    reads its default), split as the driver splits it."""
    rest = uri.partition("://")[2]
    return unquote(rest.partition("/")[2].partition("?")[0]) or None


def with_database(uri: str, database: str) -> str:
    """`uri` naming `database` in its path (its options kept)."""
    scheme, _, rest = uri.partition("://")
    hosts, _, tail = rest.partition("/")
    hosts, _, early = hosts.partition("?")  # `mongodb://h?opts`: options without the slash
    query = tail.partition("?")[2] or early
    return f"{scheme}://{hosts}/{database}" + (f"?{query}" if query else "")


def redacted(uri: str) -> str:
    """`uri` without its password, fit for a message."""
    scheme, sep, rest = uri.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return uri
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{hosts}{slash}{tail}"


def override_of(explicit: str | None, environ: Mapping[str, str]) -> StoreSource | None:
    """The store a person named (--mongo-uri, else PUSHTASK_MONGO_URI), if any."""
    if explicit:
        return StoreSource(explicit, "--mongo-uri", True)
    if environ.get(MONGO_URI_ENV):
        return StoreSource(environ[MONGO_URI_ENV], MONGO_URI_ENV, True)
    return None


def override_refusal(source: StoreSource, task: str, workers: tuple[str, str] | None) -> str | None:
    """Why a named store cannot be read (None: it can). A URI without a database reads
    the store's default database whatever the task's workers use, and would then answer
    about runs that are not there (devstack's PUSHTASK_MONGO_URI names none, and the
    demo's tasks live in `pushtask_demo`). `workers`: their URI and its Secret, if known."""
    if uri_database(source.uri) is not None:
        return None
    drop = f"unset {MONGO_URI_ENV}" if source.via == MONGO_URI_ENV else "leave out --mongo-uri"
    if workers is not None:
        theirs = uri_database(workers[0]) or DEFAULT_DATABASE
        fix = (
            f"{task}'s workers use database {theirs!r} ({workers[1]}): say "
            f"{redacted(with_database(source.uri, theirs))}"
        )
    else:
        fix = "name the database the task's workers use in its path: mongodb://HOST:PORT/DATABASE"
    return (
        f"{source.via} {redacted(source.uri)} names no database, so it would be read in "
        f"{DEFAULT_DATABASE!r} whatever the task uses; {fix}, or {drop} to read through "
        "the workers' Secret"
    )


def override_note(source: StoreSource, task: str, workers: tuple[str, str] | None) -> str | None:
    """A warning when the named database is not the one the task's workers use."""
    if workers is None:
        return None
    ours, theirs = uri_database(source.uri), uri_database(workers[0]) or DEFAULT_DATABASE
    if ours == theirs:
        return None
    return f"note: reading database {ours!r} ({source.via}); {task}'s workers use {theirs!r}"


def run_refusal(task: str, run: int, current: int) -> str | None:
    """A run number that cannot name a run of the task (None: it may)."""
    if run < 1:
        return f"--run {run}: runs are numbered from 1"
    if run > current:
        return f"{task} has no run {run}: its current run is {current}"
    return None


def missing_run(
    task: str, run: int, current: int, current_stored: bool, database: str, source: StoreSource
) -> str:
    """Why run `run` of `task` is not in `database`. An older run while the current one is
    there was pruned by retention; otherwise the runs are absent, and when a person named
    the store, that is most likely not the database the workers use."""
    where = f"database {database!r} ({source.via})"
    if run < current and current_stored:
        return (
            f"run {run} of {task} is no longer in {where}: pruned by retention (the operator "
            f"keeps a task's newest runs, the chart's runRetention); its current run {current} "
            "is there"
        )
    what = (
        f"run {run} of {task}, its current run, is not"
        if run == current
        else f"neither run {run} of {task} nor its current run {current} is"
    )
    if source.override:
        return (
            f"{what} in {where}: is it the database the task's workers use? Without "
            f"{source.via}, the plugin reads through their Secret"
        )
    return (
        f"{what} in {where}, the database its workers use: its ledger was deleted outside "
        "PushTask, or the store lost it"
    )


def tier_names(raw: str | None) -> list[str]:
    """The tier names in the operator's PUSHTASK_TIERS, read as the operator reads it
    (operator settings._tiers): a JSON object or `name=low-high,...`; empty: its defaults."""
    value = (raw or "").strip()
    if value in ("", "null", "{}"):
        return list(DEFAULT_TIERS)
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return []
        return [str(name) for name in parsed] if isinstance(parsed, dict) else []
    return [item.partition("=")[0].strip() for item in value.split(",") if item.strip()]


# -- the cluster --------------------------------------------------------------------------


def cmd_status(cluster: Cluster, ns: str, name: str, once: bool, output: str) -> int:
    task = cluster.get(ns, name)
    if output in ("json", "yaml"):
        shown = {**progress_line(task), "status": task.get("status") or {}}
        print(
            json.dumps(shown, indent=2)
            if output == "json"
            else yaml.safe_dump(shown, sort_keys=False).rstrip()
        )
        return 1 if progress_line(task)["phase"] == "Failed" else 0
    if not sys.stdout.isatty():  # a pipe or a log: one plain line per change
        last = ""
        while True:
            line = status_line(progress_line(task))
            if line != last:
                print(line, flush=True)
                last = line
            if once or actions.run_over(task):
                return 1 if task.get("status", {}).get("phase") == "Failed" else 0
            time.sleep(1.0)
            task = cluster.get(ns, name)
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, transient=False, auto_refresh=False) as bar:
        handle = bar.add_task(name, total=None, detail="")
        while True:
            p = progress_line(task)
            bar.update(handle, completed=p["done"], total=p["total"] or None, detail=detail_of(p))
            bar.refresh()
            if once or actions.run_over(task):
                return 1 if p["phase"] == "Failed" else 0
            time.sleep(1.0)
            task = cluster.get(ns, name)


def cmd_events(cluster: Cluster, ns: str, name: str) -> int:
    events = cluster.events(ns, name)
    rows = [["LAST SEEN", "TYPE", "REASON", "MESSAGE"]]
    rows += [[event_time(e), e.type or "", e.reason or "", (e.message or "").strip()]
             for e in events]  # fmt: skip
    print(format_table(rows) if events else f"no events for pushtask/{name}")
    return 0


def cmd_watch(cluster: Cluster, ns: str | None, output: str) -> int:
    """`list -w`: the list, then a line for each change, until interrupted (as `kubectl
    get -w`: the table's columns are set by the first listing)."""
    shown: dict[tuple[str, str], str] = {}
    widths: list[int] = []
    all_namespaces = ns is None

    def render(p: Mapping[str, Any]) -> str:
        if output == "json":
            return json.dumps(p)
        if output == "yaml":
            return "---\n" + yaml.safe_dump(dict(p), sort_keys=False).rstrip()
        return row_text(task_row(p, all_namespaces), widths)

    for kind, payload in cluster.watch_tasks(ns):
        if output == "table" and not widths:  # the first event lists every task
            head = table_head(all_namespaces)
            rows = [head] + [task_row(progress_line(t), all_namespaces) for t in payload]
            # Room for the numbers to grow and for the longest phase.
            least = [WATCH_WIDTHS.get(h, 0) for h in head]
            widths[:] = [max(w, m) for w, m in zip(column_widths(rows), least, strict=True)]
            print(row_text(head, widths), flush=True)
        for line in watch_lines(shown, kind, payload, render):
            print(line, flush=True)
    return 0


def store_source(
    cluster: Cluster, ns: str, name: str, explicit: str | None, environ: Mapping[str, str]
) -> StoreSource:
    """The store the task's workers use (their Deployment's Secret), unless a person named
    one: then it must name its database, and a database other than theirs is warned of."""
    task = f"pushtask/{name}"
    override = override_of(explicit, environ)
    if override is None:
        uri, where = cluster.workers_mongo_uri(ns, name)
        return StoreSource(uri, where, override=False)
    try:
        workers: tuple[str, str] | None = cluster.workers_mongo_uri(ns, name)
    except ClusterError:  # not readable from here (no permission): the override stands alone
        workers = None
    refusal = override_refusal(override, task, workers)
    if refusal is not None:
        raise CliError(refusal)
    note = override_note(override, task, workers)
    if note is not None:
        print(note, file=sys.stderr)
    return override


@dataclass(frozen=True)
class Lookup:
    state: RecipientState | None
    stage: str | None  # the run's stage; None: the run is not in the store
    current_stored: bool  # the task's current run is in the store
    database: str
    clicked: list[int] | None = None  # tracked links the user clicked (None: not tracked)
    converted: list[str] | None = None  # their conversion events (None: not tracked)


async def _lookup(
    uri: str,
    run_id: str,
    user: str,
    current_id: str,
    tracked: bool = False,
    converting: bool = False,
) -> Lookup:
    from pushtask.store import Store

    store = Store.connect(uri, serverSelectionTimeoutMS=5000)
    try:
        state, stage = await store.lookup(run_id, user)
        if stage is not None or current_id == run_id:
            current_stored = stage is not None
        else:  # only asked when needed: pruned (the current run is there) or absent
            current_stored = await store.get_run(current_id, ("_id",)) is not None
        clicked = await store.clicked(run_id, user) if tracked and state is not None else None
        converted = (
            await store.converted(run_id, user) if converting and state is not None else None
        )
        return Lookup(state, stage, current_stored, store.db.name, clicked, converted)
    finally:
        await store.close()


def cmd_recipient(
    cluster: Cluster, ns: str, name: str, user: str, run: int | None, uri: str | None
) -> int:
    from pymongo.errors import PyMongoError

    task = cluster.get(ns, name)
    shown = f"pushtask/{name}"
    current = (task.get("status") or {}).get("run")
    if current is None:
        raise CliError(f"{shown} has not started a run yet")
    number = int(current) if run is None else run
    refusal = run_refusal(shown, number, int(current))
    if refusal is not None:
        raise CliError(refusal)
    source = store_source(cluster, ns, name, uri, os.environ)
    ref = TaskRef(ns, name, task["metadata"]["uid"])
    try:
        # Clicks and conversions are shown for a run whose status counts them.
        status = task.get("status") or {}
        tracked, converting = (status.get(k) is not None for k in ("clicks", "conversions"))
        run_id, current_id = run_id_for(ref, number), run_id_for(ref, int(current))
        found = asyncio.run(_lookup(source.uri, run_id, user, current_id, tracked, converting))
    except PyMongoError as exc:
        raise CliError(
            f"MongoDB ({source.via}): {exc} (reachable from here? --mongo-uri)"
        ) from None
    if found.stage is None:
        raise CliError(
            missing_run(shown, number, int(current), found.current_stored, found.database, source)
        )
    note = actions.lookup_note(found.state is not None, found.stage, number)
    if note is not None:
        print(f"{user}: {note}")
        return 0
    lines = recipient_lines(
        found.state, number, found.database, source.via, found.clicked, found.converted
    )
    print("\n".join(lines))
    return 0


@dataclass(frozen=True)
class Tiers:
    names: list[str]
    where: str  # the operator Deployment they were read from


def configured_tiers(cluster: Cluster, release_ns: str, configmap: str) -> Tiers:
    """The tiers of the operator that watches this degrade ConfigMap (its PUSHTASK_TIERS,
    the chart's `tiers`). Raises ClusterError when there is none or it cannot be read."""
    deployment, env = cluster.operator_env(release_ns, configmap)
    return Tiers(tier_names(env.get("PUSHTASK_TIERS")), f"deployment {release_ns}/{deployment}")


def completion_tiers(cluster: Cluster, release_ns: str, configmap: str) -> list[str]:
    """The configured tiers; when the operator cannot be read (a person with the chart's
    degrade-editor Role may read only the ConfigMap), the tiers the ConfigMap names."""
    try:
        return configured_tiers(cluster, release_ns, configmap).names
    except ClusterError:
        pass
    try:
        return sorted(cluster.configmap_data(release_ns, configmap))
    except ClusterError:
        return []


def cmd_degrade(cluster: Cluster, args: argparse.Namespace, mode: str) -> int:
    ns, name, tier = args.release_namespace, args.configmap, args.tier
    try:
        known: Tiers | None = configured_tiers(cluster, ns, name)
    except ClusterError:  # not allowed to look: the operator warns of a tier it does not know
        known = None
    if known is not None and tier not in known.names:
        raise CliError(
            f"unknown tier {tier!r}: the operator ({known.where}) has tiers "
            f"{', '.join(known.names) or '(none)'}"
        )
    fn = cluster.core.patch_namespaced_config_map
    what = f'configmap "{name}"'
    cluster.call("patch", what, ns, lambda: fn(name, ns, {"data": {tier: mode}}))
    shown = "lifted" if mode == "off" else f"degraded ({mode})"
    print(f"tier {tier} {shown} (configmap {ns}/{name})")
    return 0


def cmd_validate(cluster_fn: Callable[[], Cluster], files: Sequence[str], local: bool,
                 ns_arg: str | None) -> int:  # fmt: skip
    problems: list[str] = []
    docs_by_file: list[tuple[str, list[Any]]] = []
    for f in files:
        try:
            docs = list(yaml.safe_load_all(Path(f).read_text()))
        except (OSError, yaml.YAMLError) as error:
            problems.append(f"{f}: {error}")
            continue
        problems += validate_documents(docs, f)
        docs_by_file.append((f, docs))
    if not problems and not local:
        cluster = cluster_fn()
        for f, docs in docs_by_file:
            for doc in docs:
                if isinstance(doc, Mapping) and doc.get("kind") == KIND:
                    problems += server_dry_run(cluster, f, doc, ns_arg)
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        where = "locally" if local else "locally and by the API server (dry run)"
        print(f"{len(files)} file(s) valid {where}")
    return 1 if problems else 0


def read_attrs(path: str | None) -> Any:
    """--attrs FILE: JSON or YAML (an object for every recipient, or a list of {id, ...})."""
    if path is None:
        return None
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise CliError(f"--attrs {path}: {error}") from None


def cmd_test(cluster: Cluster, ns: str, name: str, to: str, attrs_file: str | None) -> int:
    attrs = read_attrs(attrs_file)
    try:
        report = testsend.send_test(cluster, ns, name, to.split(","), attrs)
    except testsend.TestSendProblems as problems:
        for line in problems.lines:
            print(f"pushtask/{name}: {line}", file=sys.stderr)
        return TEST_NOT_SENT
    except ValueError as error:  # --to, --attrs
        raise CliError(str(error)) from None
    print(format_table(testsend.outcome_rows(report)))
    return 0 if report.delivered else 1


def server_dry_run(
    cluster: Cluster, source: str, doc: Mapping[str, Any], ns_arg: str | None
) -> list[str]:
    meta = dict(doc.get("metadata") or {})
    ns = meta.get("namespace") or ns_arg or cluster.default_namespace
    try:
        cluster.apply(dict(doc), ns, dry_run=True)
    except ClusterError as error:
        return [f"{source}: {meta.get('name') or ''}: {error}"]
    return []


# -- the command line --------------------------------------------------------------------


def kube_flags() -> argparse.ArgumentParser:
    """kubectl's flags, accepted before and after the command and its arguments (the top
    parser and every command's take them). Their default is SUPPRESS: argparse runs the
    command's parser after the top one, and a default there would reset a value given
    before the command."""
    s = argparse.SUPPRESS
    flags = argparse.ArgumentParser(add_help=False)
    g = flags.add_argument_group("kubectl's flags (before or after the command)")
    g.add_argument("-n", "--namespace", default=s, help="default: the context's namespace")
    g.add_argument("--context", default=s, help="the kubeconfig context to use")
    g.add_argument("--kubeconfig", default=s, help="default: KUBECONFIG, else ~/.kube/config")
    g.add_argument(
        "-A", "--all-namespaces", action="store_true", default=s, help="list: every namespace"
    )
    g.add_argument(
        "-o", "--output", default=s, metavar="FORMAT",
        help="list: table|json|yaml; status: bar|json|yaml",
    )  # fmt: skip
    g.add_argument(
        "-w", "--watch", action="store_true", default=s,
        help="list: then a line for each change, until interrupted",
    )  # fmt: skip
    return flags


@dataclass(frozen=True)
class Flags:
    namespace: str | None
    context: str | None
    kubeconfig: str | None
    all_namespaces: bool
    output: str
    watch: bool


def resolve_flags(command: str, given: Mapping[str, Any]) -> Flags:
    """kubectl's flags as `command` takes them; ValueError names one it does not take."""
    if given.get("all_namespaces") and command not in ALL_NAMESPACES:
        raise ValueError(f"-A/--all-namespaces: {command} works on one namespace")
    if given.get("watch") and command not in WATCHES:
        raise ValueError(f"-w/--watch: only list, get and status follow changes, not {command}")
    formats = OUTPUTS.get(command, ())
    output = given.get("output")
    if output is not None and output not in formats:
        shown = (
            f"{command} prints {', '.join(formats)}"
            if formats
            else f"{command} has no output formats (list, get and status have)"
        )
        raise ValueError(f"-o {output}: {shown}")
    return Flags(
        namespace=given.get("namespace"),
        context=given.get("context"),
        kubeconfig=given.get("kubeconfig"),
        all_namespaces=bool(given.get("all_namespaces")),
        output=output or (formats[0] if formats else ""),
        watch=bool(given.get("watch")),
    )


def parser() -> argparse.ArgumentParser:
    flags = [kube_flags()]
    top = argparse.ArgumentParser(
        prog="kubectl push",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=flags,
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=flags)

    for alias in ("list", "get"):
        command(alias, "tasks and their progress")
    status = command("status", "a live progress bar until the run ends")
    status.add_argument("name")
    status.add_argument("--once", action="store_true", help="print once and exit")
    for action in ("pause", "resume", "stop", "restart"):
        command(action, f"{action} a task").add_argument("name")
    scale = command("scale", "set spec.workers")
    scale.add_argument("name")
    scale.add_argument("workers", type=int)
    rec = command("recipient", "what happened to one user")
    rec.add_argument("name")
    rec.add_argument("user")
    rec.add_argument("--run", type=int, help="run number (default: the current run)")
    rec.add_argument(
        "--mongo-uri",
        help=f"default: {MONGO_URI_ENV}, else the Secret the task's workers use; "
        "must name the database (mongodb://HOST:PORT/DATABASE)",
    )
    command("events", "the task's Events").add_argument("name")
    for verb in ("degrade", "undegrade"):
        deg = command(verb, f"{verb} a priority tier (the degrade ConfigMap)")
        deg.add_argument("tier")
        if verb == "degrade":
            deg.add_argument("--mode", choices=["graceful", "immediate"], default="graceful")
        deg.add_argument("--release-namespace", default=DEGRADE_NAMESPACE)
        deg.add_argument("--configmap", default=DEGRADE_CONFIGMAP)
    val = command("validate", "check manifests: models, then a server dry run")
    val.add_argument("files", nargs="+")
    val.add_argument("--local", action="store_true", help="no API server: the models only")
    test = command("test", "send the task's message to a few users, marked as a test")
    test.add_argument("name")
    test.add_argument("--to", required=True, metavar="USER[,USER...]", help="the recipients")
    test.add_argument(
        "--attrs", metavar="FILE",
        help="their attributes, JSON or YAML: an object for all, or a list of {id, ...}",
    )  # fmt: skip
    return top


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    try:
        flags = resolve_flags(args.command, vars(args))
    except ValueError as problem:
        top.error(str(problem))
    try:
        return run(args, flags)
    except (CliError, ClusterError, Refused) as error:
        fail(str(error))
    except KeyboardInterrupt:  # Ctrl-C ends a watch or a followed run: no traceback
        return 130


def run(args: argparse.Namespace, flags: Flags) -> int:
    def connect() -> Cluster:
        return Cluster(flags.kubeconfig, flags.context)

    if args.command == "validate":
        return cmd_validate(connect, args.files, args.local, flags.namespace)
    cluster = connect()
    ns = flags.namespace or cluster.default_namespace
    command = args.command
    if command in ("list", "get"):
        where = None if flags.all_namespaces else ns
        if flags.watch:
            return cmd_watch(cluster, where, flags.output)
        print(list_output(cluster.tasks(where), flags.output, where))
        return 0
    if command == "status":
        return cmd_status(cluster, ns, args.name, args.once, flags.output)
    if command in ("pause", "resume", "stop", "restart"):
        print(cluster.act(ns, args.name, command))
        return 0
    if command == "scale":
        print(cluster.act(ns, args.name, "scale", args.workers))
        return 0
    if command == "recipient":
        return cmd_recipient(cluster, ns, args.name, args.user, args.run, args.mongo_uri)
    if command == "events":
        return cmd_events(cluster, ns, args.name)
    if command in ("degrade", "undegrade"):
        return cmd_degrade(cluster, args, args.mode if command == "degrade" else "off")
    if command == "test":
        return cmd_test(cluster, ns, args.name, args.to, args.attrs)
    raise AssertionError(command)


# -- completion: kubectl runs `kubectl_complete-push ARGS... PARTIAL` ----------------------

NO_FILE_COMPLETION = 4  # cobra's ShellCompDirectiveNoFileComp
SHORT = {"-n": "--namespace", "-o": "--output", "-A": "--all-namespaces", "-w": "--watch"}
VALUE_FLAGS = ("--namespace", "--context", "--kubeconfig", "--output", "--run", "--mode",
               "--mongo-uri", "--release-namespace", "--configmap", "--to", "--attrs")  # fmt: skip
TAKES_NAME = ("status", "pause", "resume", "stop", "restart", "scale", "recipient", "events",
              "test")  # fmt: skip
KUBE_FLAGS = ("--namespace", "--context", "--kubeconfig")
COMMAND_FLAGS: dict[str, tuple[str, ...]] = {
    "list": ("--all-namespaces", "--output", "--watch"),
    "get": ("--all-namespaces", "--output", "--watch"),
    "status": ("--once", "--output"),
    "recipient": ("--run", "--mongo-uri"),
    "degrade": ("--mode", "--release-namespace", "--configmap"),
    "undegrade": ("--release-namespace", "--configmap"),
    "validate": ("--local",),
    "test": ("--to", "--attrs"),
}


def split_words(words: Iterable[str]) -> tuple[list[str], dict[str, str], str | None]:
    """The positional words, the value flags given (by long name: `-n x`, `-n=x` and
    `--namespace=x` alike), and the value flag still waiting for its value, if any."""
    positionals: list[str] = []
    values: dict[str, str] = {}
    waiting: str | None = None
    for word in words:
        if waiting is not None:
            values[waiting], waiting = word, None
        elif word.startswith("-") and word != "-":
            flag, eq, value = word.partition("=")
            if not eq and flag[:2] in ("-n", "-o") and len(flag) > 2:  # `-nshop`, `-ojson`
                flag, eq, value = flag[:2], "=", flag[2:]
            flag = SHORT.get(flag, flag)
            if flag in VALUE_FLAGS:
                if eq:
                    values[flag] = value
                else:
                    waiting = flag
        else:
            positionals.append(word)
    return positionals, values, waiting


def completions(
    words: Sequence[str], names: Callable[[], list[str]], tiers: Callable[[], list[str]]
) -> list[str]:
    """Candidates for the last word of `kubectl push WORDS...` (pure but for `names` and
    `tiers`, which ask the cluster)."""
    partial = words[-1] if words else ""
    positionals, _, waiting = split_words(words[:-1])
    command = positionals[0] if positionals else ""
    if waiting == "--output":
        candidates: Iterable[str] = OUTPUTS.get(command, ())
    elif waiting == "--mode":
        candidates = ("graceful", "immediate")
    elif waiting is not None:
        candidates = ()
    elif partial.startswith("-"):
        candidates = KUBE_FLAGS + COMMAND_FLAGS.get(command, ())
    elif not positionals:
        candidates = COMMANDS
    elif command in TAKES_NAME and len(positionals) == 1:
        candidates = names()
    elif command in ("degrade", "undegrade") and len(positionals) == 1:
        candidates = tiers()
    else:
        candidates = ()
    return [c for c in candidates if c.startswith(partial)]


def complete_main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv) or [""]
    _, given, _ = split_words(words[:-1])

    def cluster() -> Cluster:
        return Cluster(given.get("--kubeconfig"), given.get("--context"))

    def names() -> list[str]:
        try:
            c = cluster()
            ns = given.get("--namespace") or c.default_namespace
            return [t["metadata"]["name"] for t in c.tasks(ns)]
        except Exception:  # completion never prints an error into the shell
            return []

    def tiers() -> list[str]:
        ns = given.get("--release-namespace", DEGRADE_NAMESPACE)
        try:
            return completion_tiers(cluster(), ns, given.get("--configmap", DEGRADE_CONFIGMAP))
        except Exception:  # as above
            return []

    for candidate in completions(words, names, tiers):
        print(candidate)
    print(f":{NO_FILE_COMPLETION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
