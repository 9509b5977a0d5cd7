"""`kubectl push`: the kubectl plugin for PushTasks.

    kubectl push validate FILE...        check manifests locally, with the API server's words
    kubectl push get [-n NS]             the tasks and their progress
    kubectl push status NAME [--watch]   a live progress bar until the run settles
    kubectl push pause|resume|stop NAME  set spec.state
    kubectl push restart NAME            a fresh run (spec.run + 1, state Started)
    kubectl push scale NAME N            spec.workers (through the scale subresource)

Kubelet-style plugin discovery: installed as the console script `kubectl-push`. It talks to
the cluster of the current kubeconfig (or the in-cluster one) and only to that.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pushtask.models import GROUP, KIND, PLURAL, VERSION, PushTaskSpec, describe_errors
from pushtask.states import TERMINAL_PHASES

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


def progress_line(task: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers `get` and `status` show, from a PushTask object."""
    status = task.get("status") or {}
    counts = status.get("counts") or {}
    total = int(counts.get("audience") or 0)
    done = sum(int(counts.get(k) or 0) for k in ("sent", "failed", "skipped", "unknown"))
    workers = status.get("workers") or {}
    return {
        "name": task["metadata"]["name"],
        "phase": status.get("phase", "-"),
        "run": status.get("run", (task.get("spec") or {}).get("run", 1)),
        "sent": int(counts.get("sent") or 0),
        "failed": int(counts.get("failed") or 0),
        "done": done,
        "total": total,
        "rate": float(status.get("rate") or 0.0),
        "eta": status.get("eta") or "-",
        "workers": f"{workers.get('live', 0)}/{workers.get('desired', 0)}",
        "message": status.get("message") or "",
    }


def state_patch(action: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec patch of a lifecycle action."""
    if action == "pause":
        return {"spec": {"state": "Paused"}}
    if action == "resume":
        return {"spec": {"state": "Started"}}
    if action == "stop":
        return {"spec": {"state": "Stopped"}}
    if action == "restart":
        return {"spec": {"state": "Started", "run": int(spec.get("run", 1)) + 1}}
    raise ValueError(f"unknown action {action!r}")


# -- the cluster --------------------------------------------------------------------------


def _api() -> Any:
    from kubernetes import client, config

    try:
        config.load_kube_config()
    except config.ConfigException:
        config.load_incluster_config()
    return client.CustomObjectsApi()


def _namespace(arg: str | None) -> str:
    if arg:
        return arg
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts()
        return str(active.get("context", {}).get("namespace") or "default")
    except (config.ConfigException, TypeError):
        return "default"


def _get(api: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))


def _patch(api: Any, ns: str, name: str, body: dict[str, Any]) -> None:
    api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, body)


def cmd_validate(files: Sequence[str]) -> int:
    problems: list[str] = []
    for f in files:
        try:
            docs = list(yaml.safe_load_all(Path(f).read_text()))
        except (OSError, yaml.YAMLError) as error:
            problems.append(f"{f}: {error}")
            continue
        problems += validate_documents(docs, f)
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"{len(files)} file(s) valid")
    return 1 if problems else 0


def cmd_get(api: Any, ns: str) -> int:
    from rich.console import Console
    from rich.table import Table

    items = api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
    table = Table("NAME", "PHASE", "RUN", "SENT", "FAILED", "TOTAL", "RATE", "ETA", "WORKERS")
    for task in items:
        p = progress_line(task)
        table.add_row(
            p["name"], p["phase"], str(p["run"]), str(p["sent"]), str(p["failed"]),
            str(p["total"]), f"{p['rate']:.0f}/s", p["eta"], p["workers"],
        )  # fmt: skip
    Console().print(table)
    return 0


def cmd_status(api: Any, ns: str, name: str, watch: bool, interval: float = 2.0) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[phase]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        handle = bar.add_task(name, total=None, rate="", phase="")
        while True:
            p = progress_line(_get(api, ns, name))
            bar.update(
                handle,
                completed=p["done"],
                total=p["total"] or None,
                rate=f"{p['rate']:.0f}/s eta {p['eta']}",
                phase=f"{p['phase']} (run {p['run']}, workers {p['workers']}) {p['message']}",
            )
            if not watch or p["phase"] in TERMINAL_PHASES:
                return 1 if p["phase"] == "Failed" else 0
            time.sleep(interval)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubectl push", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--namespace")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("validate", help="check manifests locally").add_argument("files", nargs="+")
    sub.add_parser("get", help="list tasks with progress")
    status = sub.add_parser("status", help="progress of one task")
    status.add_argument("name")
    status.add_argument("-w", "--watch", action="store_true", help="follow until the run ends")
    for action in ("pause", "resume", "stop", "restart"):
        sub.add_parser(action, help=f"{action} a task").add_argument("name")
    scale = sub.add_parser("scale", help="set spec.workers")
    scale.add_argument("name")
    scale.add_argument("workers", type=int)
    args = parser.parse_args(argv)

    if args.command == "validate":
        return cmd_validate(args.files)
    from kubernetes.client.exceptions import ApiException

    try:
        return run_cluster_command(args)
    except ApiException as error:
        what = f"pushtask/{args.name}" if hasattr(args, "name") else "pushtasks"
        print(f"error: {what}: {error.status} {error.reason}", file=sys.stderr)
        return 1


def run_cluster_command(args: argparse.Namespace) -> int:
    api = _api()
    ns = _namespace(args.namespace)
    if args.command == "get":
        return cmd_get(api, ns)
    if args.command == "status":
        return cmd_status(api, ns, args.name, args.watch)
    if args.command == "scale":
        api.patch_namespaced_custom_object_scale(
            GROUP, VERSION, ns, PLURAL, args.name, {"spec": {"replicas": args.workers}}
        )
        print(f"pushtask/{args.name} scaled to {args.workers} workers")
        return 0
    spec = _get(api, ns, args.name).get("spec") or {}
    _patch(api, ns, args.name, state_patch(args.command, spec))
    done = {"pause": "paused", "resume": "resumed", "stop": "stopped", "restart": "restarted"}
    print(f"pushtask/{args.name} {done[args.command]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
