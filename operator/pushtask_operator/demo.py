"""`python -m pushtask_operator.demo` (what `make demo` runs): the whole path, locally.

1. devstack up (a local control plane, kubelet and FerretDB; no Docker);
2. helm upgrade --install the chart into namespace `pushtask-demo`;
3. a local webhook sink that records every request;
4. kubectl apply a PushTask with a generated audience, pointed at the sink;
5. live progress from `status` until Finished, then what the sink saw.

Run it from the repository root (it uses charts/ and tests/support/sink.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "pushtask-demo"
console = Console()


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


def manifest(name: str, url: str, users: int, workers: int, rate: float) -> dict[str, Any]:
    return {
        "apiVersion": "pushtask.dev/v1alpha1",
        "kind": "PushTask",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "workers": workers,
            "rate": {"perSecond": rate},
            "audience": {
                "sources": [{"kind": "inline", "users": [f"u-{i:06d}" for i in range(users)]}]
            },
            "message": {
                "channel": "webhook",
                "webhook": {"url": url},
                "template": {
                    "title": "Spring sale",
                    "body": "Hi {{ user }}, 20% off everything this week.",
                    "link": "https://shop.example.com/sale?u={{ user }}",
                },
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--rate", type=float, default=500.0, help="sends per second")
    p.add_argument("--name", default="spring-sale")
    args = p.parse_args(argv)

    with console.status("devstack: starting the local cluster and MongoDB (first run builds)"):
        env = devstack_env()
    kubectl = ["kubectl"]
    uri = env["PUSHTASK_MONGO_URI"].rstrip("/") + "/pushtask_demo"
    sh(
        *kubectl,
        "apply",
        "-f",
        "-",
        env=env,
        input=sh(
            *kubectl, "create", "namespace", NAMESPACE, "--dry-run=client", "-o", "yaml", env=env
        ),
    )
    with console.status("helm: installing the chart"):
        sh(
            "helm",
            "upgrade",
            "--install",
            "pushtask",
            str(ROOT / "charts" / "pushtask"),
            "-n",
            NAMESPACE,
            "--wait",
            "--timeout",
            "3m",
            "--set",
            f"mongodb.uri={uri}",
            "--set",
            f"watchNamespaces={{{NAMESPACE}}}",
            env=env,
        )
    console.print(f"[green]chart installed[/green] in namespace {NAMESPACE}")

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
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        url = ready.read_text().strip()
        console.print(f"[green]webhook sink[/green] listening at {url}")
        # A fresh run each time the demo is started.
        sh(
            *kubectl,
            "delete",
            "pushtask",
            args.name,
            "-n",
            NAMESPACE,
            "--ignore-not-found",
            "--wait=true",
            env=env,
        )
        body = manifest(args.name, url, args.users, args.workers, args.rate)
        sh(*kubectl, "apply", "-f", "-", env=env, input=yaml.safe_dump(body))
        console.print(f"applied PushTask {args.name}: {args.users} users, {args.workers} workers")
        status = watch(kubectl, args.name, args.users, env)
        # The sink writes its record file through a buffer: stop it cleanly (SIGINT lets
        # it close the file) to read it whole.
        time.sleep(1.5)
        sink.send_signal(signal.SIGINT)
        sink.wait(10)
        delivered = [json.loads(line) for line in record.read_text().splitlines() if line]
        users = [r["user"] for r in delivered if 200 <= r["status"] < 300]
        console.print(
            f"[bold]{status.get('phase')}[/bold]: status says sent={status['counts']['sent']}; "
            f"the sink saw {len(users)} deliveries to {len(set(users))} distinct users "
            f"({len(users) - len(set(users))} duplicates)."
        )
        console.print(sh(*kubectl, "get", "pushtasks", "-n", NAMESPACE, env=env))
        return 0 if status.get("phase") == "Finished" else 1
    finally:
        if sink.poll() is None:
            sink.terminate()
            sink.wait(10)


def watch(kubectl: list[str], name: str, total: int, env: dict[str, str]) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("Ready", total=total, info="")
        while True:
            out = sh(*kubectl, "get", "pushtask", name, "-n", NAMESPACE, "-o", "json", env=env)
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
            if status.get("phase") in ("Finished", "Failed", "Stopped"):
                return status
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
