"""A thousand tasks on one operator (by hand, not CI): what it costs and how fast it reacts.

    python bench/operator_scale.py [--scheduled 900] [--running 100] [--recipients 1000]
                                   [--probes 20] [--markdown FILE] [--json FILE]

On devstack (started if it is not running), the chart in its own namespace, then:

1. `scheduled` PushTasks whose `startAt` is three days ahead (Ready, waiting);
2. `running` campaigns of `recipients` each at 1 worker, applied one by one (as the
   cluster's capacity allows: devstack runs each worker pod as a process of this machine);
   when they are all Finished, the scheduled ones are stopped: every task idle;
3. `probes` more tasks applied one at a time among the idle ones, each waited for until
   its first send.

Measured in each state, over `--window` seconds once it has settled: the operator's CPU
(seconds of CPU per second, from /proc) and its RSS; for every applied campaign and probe,
`kubectl apply` to its run created (the operator's reaction, on the store's clock, local
here) and to its first request at the sink (that includes a worker pod starting); for
every campaign, the lag of its `status` behind the store (its run done to the `Complete`
condition's transition, to the second). Targets (issue 23): idle tasks cost nothing per
second, p99 reaction under 2 s at 1,000 tasks, RSS under 300 MiB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from bench import cluster  # noqa: E402
from bench.cluster import RESOURCE, sh  # noqa: E402
from bench.worker import proc_cpu  # noqa: E402
from devstack.demo import devstack_env  # noqa: E402
from tests.support.sinkprocess import sink_process  # noqa: E402

NAMESPACE = "pushtask-scale"
RELEASE = "scale"
SYSTEM_DB = "pushtask_scale"


@dataclass
class State:
    name: str
    tasks: int
    cpu_per_second: float  # operator CPU seconds per wall second
    rss_mib: float


@dataclass
class Reaction:
    what: str
    n: int
    to_run_p50: float
    to_run_p99: float
    to_send_p50: float
    to_send_p99: float


def kubectl(*args: str, env: dict[str, str], input: str | None = None) -> str:
    return sh("kubectl", "-n", NAMESPACE, *args, env=env, input=input)


def task(name: str, url: str, users: int, *, start_at: datetime | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "workers": 1,
        "rate": {"perSecond": 1000},
        "audience": {
            "shards": 4,
            "sources": [{"kind": "inline", "users": [f"{name}-{i}" for i in range(users)]}],
        },
        "message": {
            "channel": "webhook",
            "webhook": {"url": url, "timeoutSeconds": 10},
            "template": {"title": "Sale", "body": "Hi {{ user }}"},
        },
    }
    if start_at is not None:
        spec["schedule"] = {"startAt": start_at.isoformat()}
    return {
        "apiVersion": "pushtask.dev/v1alpha1",
        "kind": "PushTask",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


# -- the operator's process ---------------------------------------------------------------


def operator_pid(env: dict[str, str]) -> int:
    pod = cluster.operator_pod(env, NAMESPACE)
    pids = cluster.local_pids(f"POD_NAME={pod}")
    if not pids:
        raise RuntimeError(f"no local process of the operator pod {pod}")
    return pids[0]


def cpu_seconds(pid: int) -> float:
    if (used := proc_cpu(pid)) is None:
        raise RuntimeError(f"the operator's process {pid} has gone")
    return used


def rss_mib(pid: int) -> float:
    return cluster.memory_mib(pid, "VmRSS") or 0.0


def measure(name: str, tasks: int, pid: int, window: float) -> State:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    used = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    state = State(name, tasks, used, rss_mib(pid))
    print(f"{name}: {tasks} tasks, operator CPU {used:.3f} s/s, RSS {state.rss_mib:.0f} MiB",
          flush=True)  # fmt: skip
    return state


def settle(
    pid: int, quiet: float = 0.02, window: float = 10.0, timeout: float = 600.0
) -> tuple[float, float]:
    """Wait until the operator uses under `quiet` CPU seconds a second over `window`;
    returns (seconds waited, CPU seconds it used meanwhile)."""
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    while time.monotonic() - t0 < timeout:
        c = cpu_seconds(pid)
        time.sleep(window)
        if (cpu_seconds(pid) - c) / window < quiet:
            break
    return time.monotonic() - t0, cpu_seconds(pid) - c0


# -- reactions -------------------------------------------------------------------------------


def runs_created(mongo: str) -> dict[str, float]:
    """Task name -> when its first run was created (store clock: this machine's)."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo)
    try:
        runs = client[SYSTEM_DB].runs.find({}, {"task.name": 1, "created": 1, "doneAt": 1})
        out: dict[str, float] = {}
        for r in runs:
            name = r["task"]["name"]
            t = r["created"].replace(tzinfo=UTC).timestamp()
            out[name] = min(out.get(name, t), t)
        return out
    finally:
        client.close()


def runs_done(mongo: str) -> dict[str, float]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo)
    try:
        runs = client[SYSTEM_DB].runs.find({"doneAt": {"$ne": None}}, {"task.name": 1, "doneAt": 1})
        return {r["task"]["name"]: r["doneAt"].replace(tzinfo=UTC).timestamp() for r in runs}
    finally:
        client.close()


def first_sends(requests: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in requests:
        name = str(r.get("task") or "").split("/")[-1]
        out[name] = min(out.get(name, float(r["t"])), float(r["t"]))
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def reaction(what: str, applied: dict[str, float], created: dict[str, float],
             sent: dict[str, float]) -> Reaction:  # fmt: skip
    to_run = [created[n] - t for n, t in applied.items() if n in created]
    to_send = [sent[n] - t for n, t in applied.items() if n in sent]
    r = Reaction(what, len(applied), pct(to_run, 0.5), pct(to_run, 0.99),
                 pct(to_send, 0.5), pct(to_send, 0.99))  # fmt: skip
    print(f"{what}: apply -> run created p50 {r.to_run_p50:.2f}s p99 {r.to_run_p99:.2f}s; "
          f"-> first send p50 {r.to_send_p50:.2f}s p99 {r.to_send_p99:.2f}s")  # fmt: skip
    return r


def phases(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    items = json.loads(kubectl("get", RESOURCE, "-o", "json", env=env))["items"]
    return {i["metadata"]["name"]: i.get("status") or {} for i in items}


def wait_until(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(2)


def complete_at(status: dict[str, Any]) -> float | None:
    for c in status.get("conditions") or []:
        if c.get("type") == "Complete" and c.get("status") == "True":
            return datetime.fromisoformat(c["lastTransitionTime"]).timestamp()
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scheduled", type=int, default=900)
    p.add_argument("--running", type=int, default=100)
    p.add_argument("--recipients", type=int, default=1000)
    p.add_argument("--probes", type=int, default=20)
    p.add_argument("--window", type=float, default=30.0, help="seconds of each CPU reading")
    p.add_argument("--markdown", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--keep", action="store_true", help="leave the namespace and its tasks")
    args = p.parse_args(argv)
    env = devstack_env()
    mongo = env["PUSHTASK_MONGO_URI"]
    cluster.clear(env, NAMESPACE)
    client: MongoClient[dict[str, Any]] = MongoClient(mongo)
    client.drop_database(SYSTEM_DB)
    client.close()
    cluster.install(env, NAMESPACE, RELEASE, f"{mongo.rstrip('/')}/{SYSTEM_DB}", [])
    pid = operator_pid(env)
    time.sleep(15)  # past the operator's start (its CRD scan, the watches' first lists)
    states = [measure("no task", 0, pid, args.window)]
    reactions: list[Reaction] = []
    with sink_process(Path(tempfile.mkdtemp()), "127.0.0.1") as sink:
        later = datetime.now(UTC) + timedelta(days=3)
        docs = [task(f"later-{i:04d}", sink.url, 10, start_at=later) for i in range(args.scheduled)]
        kubectl("apply", "-f", "-", env=env, input=yaml.safe_dump_all(docs))
        wait_until(f"{args.scheduled} tasks Ready",
                   lambda: sum(s.get("phase") == "Ready" for s in phases(env).values())
                   >= args.scheduled, 600)  # fmt: skip
        states.append(measure("scheduled days ahead", args.scheduled, pid, args.window))

        applied: dict[str, float] = {}
        c0, t0 = cpu_seconds(pid), time.monotonic()
        for i in range(args.running):
            name = f"now-{i:04d}"
            kubectl("apply", "-f", "-", env=env,
                    input=yaml.safe_dump(task(name, sink.url, args.recipients)))  # fmt: skip
            applied[name] = time.time()
        total = args.scheduled + args.running
        wait_until(f"{args.running} campaigns Finished",
                   lambda: sum(s.get("phase") == "Finished" for s in phases(env).values())
                   >= args.running, 1800)  # fmt: skip
        # Over the whole time from the first apply to the last Finished (the campaigns are
        # short: a window after the applies would find most of them done).
        used = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
        states.append(State(f"{args.running} applied and run", total, used, rss_mib(pid)))
        print(f"{args.running} applied and run: operator CPU {used:.3f} s/s over "
              f"{time.monotonic() - t0:.0f}s, RSS {rss_mib(pid):.0f} MiB", flush=True)  # fmt: skip
        reactions.append(
            reaction(
                f"{args.running} campaigns applied beside {args.scheduled}",
                applied,
                runs_created(mongo),
                first_sends(sink.requests()),
            )
        )
        done = runs_done(mongo)
        statuses = phases(env)
        lags = [at - done[n] for n, s in statuses.items()
                if n in done and (at := complete_at(s)) is not None]  # fmt: skip
        for doc in docs:  # one apply for all of them, as a user's script would
            doc["spec"]["state"] = "Stopped"
        kubectl("apply", "-f", "-", env=env, input=yaml.safe_dump_all(docs))
        wait_until("every task at rest",
                   lambda: all(s.get("phase") in ("Finished", "Stopped")
                               for s in phases(env).values()), 600)  # fmt: skip
        # Stopping 900 tasks is a wave of work (a status, a Deployment and an Event each):
        # idle is measured once the operator has worked through it.
        took, spent = settle(pid)
        print(f"the stop wave settled {took:.0f}s after every phase was at rest "
              f"({spent:.1f} s of operator CPU)", flush=True)  # fmt: skip
        states.append(measure("idle (Finished or Stopped)", total, pid, args.window))

        probes: dict[str, float] = {}
        for i in range(args.probes):
            name = f"probe-{i:03d}"
            kubectl("apply", "-f", "-", env=env, input=yaml.safe_dump(task(name, sink.url, 10)))
            probes[name] = time.time()
            wait_until(
                f"{name}'s first send", lambda n=name: n in first_sends(sink.requests()), 120
            )
        reactions.append(reaction(f"one more task among {total} idle", probes,
                                  runs_created(mongo), first_sends(sink.requests())))  # fmt: skip
    if not args.keep:
        cluster.clear(env, NAMESPACE)
    lag_line = (f"status behind the store (run done -> Complete, to the second): "
                f"p50 {pct(lags, 0.5):.1f}s, p99 {pct(lags, 0.99):.1f}s, max {max(lags):.1f}s "
                f"over {len(lags)} campaigns")  # fmt: skip
    print(lag_line)
    report = (
        "| state | tasks | operator CPU s/s | operator RSS MiB |\n| --- | ---: | ---: | ---: |\n"
    )
    report += "".join(f"| {s.name} | {s.tasks:,} | {s.cpu_per_second:.3f} | {s.rss_mib:.0f} |\n"
                      for s in states)  # fmt: skip
    report += ("\n| reaction | tasks | apply to run created p50 / p99 s "
               "| apply to first send p50 / p99 s |\n| --- | ---: | ---: | ---: |\n")  # fmt: skip
    report += "".join(f"| {r.what} | {r.n} | {r.to_run_p50:.2f} / {r.to_run_p99:.2f} "
                      f"| {r.to_send_p50:.2f} / {r.to_send_p99:.2f} |\n"
                      for r in reactions)  # fmt: skip
    report += f"\n{lag_line}\n"
    print("\n" + report)
    if args.markdown:
        args.markdown.write_text(report)
    if args.json:
        payload = {"states": [asdict(s) for s in states],
                   "reactions": [asdict(r) for r in reactions],
                   "status_lag": {"p50": pct(lags, 0.5), "p99": pct(lags, 0.99),
                                  "median": statistics.median(lags) if lags else None}}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
