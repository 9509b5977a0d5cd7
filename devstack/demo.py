"""`python -m devstack.demo` (what `make demo` runs): the whole path, locally.

1. devstack up (a local control plane, kubelet and MongoDB; no Docker);
2. helm upgrade --install the chart into namespace `pushtask-demo`;
3. a local webhook sink that records every request;
4. kubectl apply examples/webhook-campaign.yaml, pointed at the sink, its audience
   replaced by generated users (`--users`): an inline list up to the models' cap on one
   (10,000), above it a `users` collection seeded in devstack's MongoDB and read by a
   `mongo` source;
5. live progress from `status` until Finished, then what the sink saw.

The chart's web console is on (`console.enabled`); the demo prints its address and the
token its actions need (a Secret it makes once per namespace).

Run it from the repository root (it uses charts/ and tests/support/sink.py).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from pymongo import MongoClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pushtask.models import MAX_INLINE_USERS
from pushtask.states import TERMINAL_PHASES

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "pushtask-demo"
# With its group: a bare `pushtask` is ambiguous beside another CRD of that plural.
RESOURCE = "pushtasks.pushtask.dev"
# Where a generated audience above the inline cap is seeded: a database of its own beside
# the system database, read through the system's MongoDB (a mongo source without secretRef).
AUDIENCE_COLLECTION = "users"
CONSOLE_SECRET = "pushtask-console-token"
console = Console()


def interruptible() -> None:
    """In a child: SIGINT back to its default. A shell starts background jobs with SIGINT
    ignored, and a Python started that way never raises KeyboardInterrupt: the sink would
    not stop on the SIGINT below (seen when `make test` ran as a background job)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sh(*cmd: str, env: dict[str, str], input: str | None = None) -> str:
    proc = subprocess.run(cmd, env=env, input=input, capture_output=True, text=True)
    if proc.returncode != 0:
        console.print(f"[red]{' '.join(cmd[:3])} ... failed:[/red]\n{proc.stderr}{proc.stdout}")
        sys.exit(proc.returncode)
    return proc.stdout


def devstack_env() -> dict[str, str]:
    sh(sys.executable, "-m", "devstack", "up", env=dict(os.environ))
    exports = sh(sys.executable, "-m", "devstack", "env", env=dict(os.environ))
    env = dict(os.environ)
    for line in exports.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value.replace('"$PATH"', env["PATH"]).strip('"')
    return env


EXAMPLE = ROOT / "examples" / "webhook-campaign.yaml"


def console_token(kubectl: list[str], ns: str, env: dict[str, str]) -> str:
    """The console's bearer token: the namespace's Secret, made once (a pod reads it at
    start, so a new token on every demo would not reach a console already running)."""
    got = subprocess.run(
        [*kubectl, "get", "secret", CONSOLE_SECRET, "-n", ns, "-o=jsonpath={.data.token}"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if got.returncode == 0 and got.stdout:
        return base64.b64decode(got.stdout).decode()
    token = secrets.token_urlsafe(24)
    sh(*kubectl, "create", "secret", "generic", CONSOLE_SECRET, "-n", ns,
       f"--from-literal=token={token}", env=env)  # fmt: skip
    return token


def system_database(namespace: str) -> str:
    return namespace.replace("-", "_")[:60]


def audience_database(namespace: str) -> str:
    return f"{system_database(namespace)[:54]}_audience"  # MongoDB names stop at 63 bytes


def user_ids(n: int) -> list[str]:
    return [f"u-{i:06d}" for i in range(n)]


def manifest(
    namespace: str,
    url: str,
    users: int,
    workers: int,
    rate: float,
    *,
    audience_db: str | None = None,
) -> dict[str, Any]:
    """The example campaign, sent to the local sink, to `users` generated users.

    Up to MAX_INLINE_USERS they are listed inline; above it (the models refuse a longer
    list) the source is `audience_db`'s users collection, seeded by `seed_users`.
    """
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"]["namespace"] = namespace
    spec = body["spec"]
    spec["message"]["webhook"]["url"] = url
    spec["workers"] = workers
    spec["rate"] = {"perSecond": rate}
    if users > MAX_INLINE_USERS:
        if audience_db is None:
            raise ValueError(f"more than {MAX_INLINE_USERS:,} users need a seeded collection")
        source = {"kind": "mongo", "database": audience_db, "collection": AUDIENCE_COLLECTION}
        spec["audience"]["sources"] = [source]
    elif users:
        spec["audience"]["sources"] = [{"kind": "inline", "users": user_ids(users)}]
    return body


def audience_size(body: dict[str, Any], users: int) -> int:
    source = body["spec"]["audience"]["sources"][0]
    return users if source["kind"] == "mongo" else len(source["users"])


def seed_users(mongo_uri: str, database: str, users: int) -> None:
    """A fresh users collection of `users` generated ids (what a CRM's would hold)."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    try:
        collection = client[database][AUDIENCE_COLLECTION]
        collection.drop()
        ids = user_ids(users)
        for start in range(0, users, 5000):
            collection.insert_many([{"_id": u} for u in ids[start : start + 5000]])
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--users",
        type=int,
        default=5000,
        help=f"0: the example's own users; above {MAX_INLINE_USERS:,}: a seeded mongo source",
    )
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--rate", type=float, default=500.0, help="sends per second")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for the end")
    p.add_argument("--namespace", default=NAMESPACE)
    p.add_argument(
        "--no-up",
        action="store_true",
        help="use the cluster and MongoDB of KUBECONFIG and PUSHTASK_MONGO_URI as they are",
    )
    args = p.parse_args(argv)
    ns = args.namespace

    if args.no_up:
        env = dict(os.environ)
    else:
        with console.status("devstack: starting the local cluster and MongoDB (first run builds)"):
            env = devstack_env()
    kubectl = ["kubectl"]
    uri = env["PUSHTASK_MONGO_URI"].rstrip("/") + "/" + system_database(ns)
    audience_db: str | None = None
    if args.users > MAX_INLINE_USERS:
        audience_db = audience_database(ns)
        with console.status(f"MongoDB: seeding {args.users:,} users"):
            seed_users(env["PUSHTASK_MONGO_URI"], audience_db, args.users)
        console.print(
            f"[green]seeded[/green] {args.users:,} users in {audience_db}.{AUDIENCE_COLLECTION} "
            f"(more than {MAX_INLINE_USERS:,}: a mongo source, not an inline list)"
        )
    sh(
        *kubectl,
        "apply",
        "-f",
        "-",
        env=env,
        input=sh(*kubectl, "create", "namespace", ns, "--dry-run=client", "-o", "yaml", env=env),
    )
    token = console_token(kubectl, ns, env)
    with console.status("helm: installing the chart"):
        sh(
            "helm",
            "upgrade",
            "--install",
            "pushtask",
            str(ROOT / "charts" / "pushtask"),
            "-n",
            ns,
            "--wait",
            "--timeout",
            "3m",
            "--set",
            f"mongodb.uri={uri}",
            "--set",
            f"watchNamespaces={{{ns}}}",
            "--set",
            "console.enabled=true",
            "--set",
            f"console.tokenSecret.name={CONSOLE_SECRET}",
            env=env,
        )
    console.print(f"[green]chart installed[/green] in namespace {ns}")
    selector = "app.kubernetes.io/name=pushtask-console"
    jsonpath = "-o=jsonpath={.items[0].status.podIP}"
    ip = sh(*kubectl, "get", "pods", "-n", ns, "-l", selector, jsonpath, env=env).strip()
    # devstack gives each pod a loopback address of its own: no port-forward needed.
    console.print(f"[green]web console[/green]: http://{ip}:8080/  (token for actions: {token})")

    ready = Path(tempfile.mkdtemp()) / "sink-url"
    record = ready.with_name("requests.jsonl")
    sink = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.sink",
            "--host",
            "127.0.0.1",
            "--ready-file",
            str(ready),
            "--record",
            str(record),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        preexec_fn=interruptible,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        url = ready.read_text().strip()
        console.print(f"[green]webhook sink[/green] listening at {url}")
        body = manifest(ns, url, args.users, args.workers, args.rate, audience_db=audience_db)
        name = body["metadata"]["name"]
        # A fresh run each time the demo is started.
        sh(
            *kubectl,
            "delete",
            RESOURCE,
            name,
            "-n",
            ns,
            "--ignore-not-found",
            "--wait=true",
            env=env,
        )
        sh(*kubectl, "apply", "-f", "-", env=env, input=yaml.safe_dump(body))
        total = audience_size(body, args.users)
        console.print(
            f"applied {EXAMPLE.relative_to(ROOT)} as PushTask {name}: "
            f"{total} users, {args.workers} workers"
        )
        status = watch(kubectl, ns, name, total, env, args.timeout)
        # The sink writes its record file through a buffer: stop it cleanly (SIGINT lets
        # it close the file) to read it whole.
        time.sleep(1.5)
        sink.send_signal(signal.SIGINT)
        sink.wait(10)
        delivered = [json.loads(line) for line in record.read_text().splitlines() if line]
        users = [r["user"] for r in delivered if 200 <= r["status"] < 300]
        sent = (status.get("counts") or {}).get("sent")
        duplicates = len(users) - len(set(users))
        console.print(
            f"[bold]{status.get('phase')}[/bold]: status says sent={sent}; "
            f"the sink saw {len(users)} deliveries to {len(set(users))} distinct users "
            f"({duplicates} duplicates)."
        )
        console.print(sh(*kubectl, "get", RESOURCE, "-n", ns, env=env))
        finished = status.get("phase") == "Finished" and sent == len(users) == total
        return 0 if finished and not duplicates else 1
    finally:
        if sink.poll() is None:
            sink.terminate()
            sink.wait(10)


def watch(
    kubectl: list[str], ns: str, name: str, total: int, env: dict[str, str], timeout: float
) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("Ready", total=total, info="")
        deadline = time.monotonic() + timeout
        while True:
            out = sh(*kubectl, "get", RESOURCE, name, "-n", ns, "-o", "json", env=env)
            status = json.loads(out).get("status") or {}
            counts = status.get("counts") or {}
            workers = status.get("workers") or {}
            done = sum(counts.get(k, 0) for k in ("sent", "failed", "unknown", "skipped"))
            bar.update(
                job,
                completed=done,
                description=f"{status.get('phase', '...'):8}",
                info=f"{status.get('rate', 0):7.1f}/s  eta {status.get('eta') or '-':>6}  "
                f"workers {workers.get('live', 0)}/{workers.get('desired', 0)}",
            )
            if status.get("phase") in TERMINAL_PHASES:
                return status
            if time.monotonic() > deadline:
                console.print(f"[red]not finished after {timeout:.0f}s[/red]: {status}")
                return status
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
