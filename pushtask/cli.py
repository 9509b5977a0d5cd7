"""`kubectl push`: the kubectl plugin for PushTasks (console script `kubectl-push`).

    kubectl push list [-A]                     tasks and their progress (alias: get)
    kubectl push status NAME [--once] [-o json]  a live progress bar until the run ends
    kubectl push pause|resume|stop NAME        spec.state
    kubectl push restart NAME                  a new run (spec.run + 1)
    kubectl push scale NAME N                  spec.workers
    kubectl push recipient NAME USER [--run R] what happened to one user
    kubectl push events NAME                   the task's Events
    kubectl push degrade TIER [--mode M]       pause a priority tier at a peak (undegrade)
    kubectl push validate FILE...              the models' checks, then a server dry run

Every action is one patch of the PushTask carrying the resourceVersion it was computed
from (retried on a conflict), and prints what it changed. Errors are one line on stderr:
exit 1 (refused, not found, forbidden, API error), 2 (usage). --namespace, --context,
--kubeconfig and KUBECONFIG work as for kubectl. Completion: kubectl calls the
`kubectl_complete-push` script installed beside this one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError

from pushtask import actions
from pushtask.actions import Refused, progress_line
from pushtask.models import KIND, PushTaskSpec, describe_errors
from pushtask.planning import TaskRef, run_id_for
from pushtask.taskapi import Cluster, ClusterError, event_time

COMMANDS = (
    "list", "get", "status", "pause", "resume", "stop", "restart", "scale",
    "recipient", "events", "degrade", "undegrade", "validate",
)  # fmt: skip
# The chart's defaults: release `pushtask` in namespace `pushtask`.
DEGRADE_NAMESPACE = os.environ.get("PUSHTASK_RELEASE_NAMESPACE", "pushtask")
DEGRADE_CONFIGMAP = os.environ.get("PUSHTASK_DEGRADE_CONFIGMAP", "pushtask-degrade")


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


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def task_rows(tasks: Sequence[Mapping[str, Any]], all_namespaces: bool) -> str:
    head = ["NAME", "PHASE", "RUN", "SENT", "FAILED", "TOTAL", "RATE", "ETA", "WORKERS"]
    rows: list[list[str]] = [(["NAMESPACE"] if all_namespaces else []) + head]
    for task in tasks:
        p = progress_line(task)
        row = [p["name"], p["phase"], str(p["run"]), str(p["sent"]), str(p["failed"]),
               str(p["total"]), f"{p['rate']:.0f}/s", p["eta"], p["workers"]]  # fmt: skip
        rows.append(([p["namespace"]] if all_namespaces else []) + row)
    return format_table(rows)


def detail_of(p: Mapping[str, Any]) -> str:
    return (
        f"{p['rate']:.0f}/s  eta {p['eta']}  {p['phase']}  run {p['run']}  "
        f"workers {p['workers']}  {p['message']}"
    ).rstrip()


def status_line(p: Mapping[str, Any], width: int = 30) -> str:
    """The progress bar as text, for a terminal that is not one (a pipe, CI logs)."""
    total, done = int(p["total"]), int(p["done"])
    share = done / total if total else 0.0
    filled = int(share * width)  # floor: the bar is full only when the run is
    bar = "#" * filled + "-" * (width - filled)
    return f"{p['name']}  [{bar}] {share:4.0%}  {done}/{total}  {detail_of(p)}"


def recipient_lines(state: Any, run: int) -> list[str]:
    at = state.at.isoformat() if state.at else "-"
    return [
        f"user:      {state.user}",
        f"run:       {run} ({state.run})",
        f"status:    {state.status}",
        f"attempts:  {state.attempts}",
        f"error:     {state.error or '-'}",
        f"time:      {at}",
        f"worker:    {state.worker or '-'}",
        f"chunk:     {state.chunk} #{state.position}",
    ]


# -- the cluster --------------------------------------------------------------------------


def cmd_status(cluster: Cluster, ns: str, name: str, once: bool, output: str) -> int:
    task = cluster.get(ns, name)
    if output == "json":
        print(json.dumps({**progress_line(task), "status": task.get("status") or {}}, indent=2))
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


def mongo_uri(cluster: Cluster, ns: str, name: str, explicit: str | None) -> str:
    """--mongo-uri, PUSHTASK_MONGO_URI, or the Secret the task's workers use."""
    if explicit or os.environ.get("PUSHTASK_MONGO_URI"):
        return str(explicit or os.environ["PUSHTASK_MONGO_URI"])
    return cluster.workers_mongo_uri(ns, name)


async def _recipient(uri: str, run_id: str, user: str) -> tuple[Any, str | None]:
    from pushtask.store import Store

    store = Store.connect(uri, serverSelectionTimeoutMS=5000)
    try:
        return await store.lookup(run_id, user)
    finally:
        await store.close()


def cmd_recipient(
    cluster: Cluster, ns: str, name: str, user: str, run: int | None, uri: str | None
) -> int:
    from pymongo.errors import PyMongoError

    task = cluster.get(ns, name)
    meta, status = task["metadata"], task.get("status") or {}
    current = status.get("run")
    number = run if run is not None else current
    if number is None:
        raise CliError(f"pushtask/{name} has not started a run yet")
    run_id = run_id_for(TaskRef(ns, name, meta["uid"]), int(number))
    try:
        state, stage = asyncio.run(_recipient(mongo_uri(cluster, ns, name, uri), run_id, user))
    except PyMongoError as exc:
        raise CliError(f"MongoDB: {exc} (reachable from here? --mongo-uri)") from None
    note = actions.lookup_note(state is not None, stage, int(number))
    if stage is None:
        raise CliError(f"pushtask/{name}: {note} (only the last few runs are kept)")
    if note is not None:
        print(f"{user}: {note}")
        return 0
    print("\n".join(recipient_lines(state, int(number))))
    return 0


def cmd_degrade(cluster: Cluster, args: argparse.Namespace, mode: str) -> int:
    ns, name = args.release_namespace, args.configmap
    fn = cluster.core.patch_namespaced_config_map
    what = f'configmap "{name}"'
    cluster.call("patch", what, ns, lambda: fn(name, ns, {"data": {args.tier: mode}}))
    shown = "lifted" if mode == "off" else f"degraded ({mode})"
    print(f"tier {args.tier} {shown} (configmap {ns}/{name})")
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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="kubectl push",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("-n", "--namespace")
    top.add_argument("--context")
    top.add_argument("--kubeconfig")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for alias in ("list", "get"):
        lst = sub.add_parser(alias, help="tasks and their progress")
        lst.add_argument("-A", "--all-namespaces", action="store_true")
        lst.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status = sub.add_parser("status", help="a live progress bar until the run ends")
    status.add_argument("name")
    status.add_argument("--once", action="store_true", help="print once and exit")
    status.add_argument("-w", "--watch", action="store_true", help=argparse.SUPPRESS)
    status.add_argument("-o", "--output", choices=["bar", "json"], default="bar")
    for action in ("pause", "resume", "stop", "restart"):
        sub.add_parser(action, help=f"{action} a task").add_argument("name")
    scale = sub.add_parser("scale", help="set spec.workers")
    scale.add_argument("name")
    scale.add_argument("workers", type=int)
    rec = sub.add_parser("recipient", help="what happened to one user")
    rec.add_argument("name")
    rec.add_argument("user")
    rec.add_argument("--run", type=int, help="run number (default: the current run)")
    rec.add_argument("--mongo-uri", help="default: PUSHTASK_MONGO_URI or the workers' Secret")
    sub.add_parser("events", help="the task's Events").add_argument("name")
    for verb in ("degrade", "undegrade"):
        deg = sub.add_parser(verb, help=f"{verb} a priority tier (the degrade ConfigMap)")
        deg.add_argument("tier")
        if verb == "degrade":
            deg.add_argument("--mode", choices=["graceful", "immediate"], default="graceful")
        deg.add_argument("--release-namespace", default=DEGRADE_NAMESPACE)
        deg.add_argument("--configmap", default=DEGRADE_CONFIGMAP)
    val = sub.add_parser("validate", help="check manifests: models, then a server dry run")
    val.add_argument("files", nargs="+")
    val.add_argument("--local", action="store_true", help="no API server: the models only")
    return top


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except (CliError, ClusterError, Refused) as error:
        fail(str(error))


def run(args: argparse.Namespace) -> int:
    def connect() -> Cluster:
        return Cluster(args.kubeconfig, args.context)

    if args.command == "validate":
        return cmd_validate(connect, args.files, args.local, args.namespace)
    cluster = connect()
    ns = args.namespace or cluster.default_namespace
    command = args.command
    if command in ("list", "get"):
        tasks = cluster.tasks(None if args.all_namespaces else ns)
        if args.output == "json":
            print(json.dumps([progress_line(t) for t in tasks], indent=2))
        elif not tasks:
            where = "any namespace" if args.all_namespaces else f"namespace {ns}"
            print(f"no PushTasks in {where}")
        else:
            print(task_rows(tasks, args.all_namespaces))
        return 0
    if command == "status":
        return cmd_status(cluster, ns, args.name, args.once, args.output)
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
    raise AssertionError(command)


# -- completion: kubectl runs `kubectl_complete-push ARGS... PARTIAL` ----------------------

NO_FILE_COMPLETION = 4  # cobra's ShellCompDirectiveNoFileComp
VALUE_FLAGS = ("-n", "--namespace", "--context", "--kubeconfig", "-o", "--output", "--run",
               "--mode", "--mongo-uri", "--release-namespace", "--configmap")  # fmt: skip
TAKES_NAME = ("status", "pause", "resume", "stop", "restart", "scale", "recipient", "events")


def completions(words: Sequence[str], names: Callable[[], list[str]]) -> list[str]:
    """Candidates for the last word of `kubectl push WORDS...` (pure but for `names`)."""
    partial = words[-1] if words else ""
    before: list[str] = []
    skip = False
    for w in words[:-1]:  # the positional words, without flags and their values
        if skip:
            skip = False
        elif w.startswith("-"):
            skip = "=" not in w and w in VALUE_FLAGS
        else:
            before.append(w)
    if partial.startswith("-"):
        flags = ["--namespace", "--context", "--kubeconfig", "--all-namespaces", "--once",
                 "--output", "--run", "--mode", "--local"]  # fmt: skip
        return [f for f in flags if f.startswith(partial)]
    if not before:
        return [c for c in COMMANDS if c.startswith(partial)]
    if before[0] in TAKES_NAME and len(before) == 1:
        return [n for n in names() if n.startswith(partial)]
    if before[0] in ("degrade", "undegrade") and len(before) == 1:
        return [t for t in ("low", "normal", "critical") if t.startswith(partial)]
    return []


def complete_main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv) or [""]

    def names() -> list[str]:
        flags = {w.split("=")[0]: i for i, w in enumerate(words)}
        ns = None
        for flag in ("-n", "--namespace"):
            if flag in flags and flags[flag] + 1 < len(words):
                ns = words[flags[flag] + 1]
        try:
            cluster = Cluster(None, None)
            return [t["metadata"]["name"] for t in cluster.tasks(ns or cluster.default_namespace)]
        except Exception:  # completion never prints an error into the shell
            return []

    for candidate in completions(words, names):
        print(candidate)
    print(f":{NO_FILE_COMPLETION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
