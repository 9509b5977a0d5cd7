"""A campaign end to end through the cluster, at the sizes users meet (by hand, not CI).

    python bench/e2e.py [--sizes 10000,100000,1000000] [--workers 4] [--json FILE]
                        [--markdown FILE] [--plot FILE.png]

On devstack (started if it is not running): the chart installed in its own namespace,
`sizes` users seeded in a MongoDB `users` collection (every fifth one inactive), and for
each size a PushTask whose `mongo` source keeps the active ones (80%) and whose exclusion
(a second collection, `optouts`) leaves out 10,000 of those (1% of the smaller sizes),
`workers` workers, an unlimited rate (`perSecond: 1000000`), webhooks to a sink on this
machine. Just before each campaign, the ceiling: a plain aiohttp client sending the same
number of requests to the same sink (bench/worker.py's), so the delivery rate reads as a
share of what this machine allows at that moment.

Per size, from the run's own timestamps in the store (on the store's clock): the operator's
reaction (`kubectl apply` to the run created), the audience (sources read, filtered,
deduplicated, excluded), the seal (shards counted and cut into chunks), the delivery, and
the status catching up (the run done to `Finished`); the peak RSS of each worker and of the
operator (VmHWM of their processes: devstack runs pods as local processes); the store
documents the workers wrote per recipient (PUSHTASK_STORE_STATS_FILE through the chart's
`worker.env`) and the bytes the run left in the store; and at the sink every recipient
once, nobody else. Targets (issue 23): the delivery at >= 50% of the ceiling, audience plus
seal under a fifth of the whole.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bson  # noqa: E402
import yaml  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from bench import cluster  # noqa: E402
from bench.cluster import RESOURCE, sh  # noqa: E402
from bench.worker import SinkProcess, measure_ceiling, store_writes  # noqa: E402
from devstack.demo import devstack_env  # noqa: E402

NAMESPACE = "pushtask-bench"
RELEASE = "bench"
SYSTEM_DB = "pushtask_bench"
AUDIENCE_DB = "pushtask_bench_audience"
EXCLUDED = 10_000
CEILING_MAX = 200_000  # the ceiling is a rate: this many requests measure it well enough


@dataclass
class Campaign:
    size: int  # users in the collection
    recipients: int  # after the filter and the exclusion
    workers: int
    ceiling_per_second: float
    reaction: float  # apply -> run created
    audience: float  # run created -> audience done
    seal: float  # audience done -> sealed
    delivery: float  # sealed -> run done
    status_lag: float  # run done -> status Finished
    total: float  # apply -> Finished
    worker_rss_mib: list[float] = field(default_factory=list)
    operator_rss_mib: float = 0.0
    store_docs_written: int | None = None
    store_bytes: int = 0
    delivered: int = 0
    duplicates: int = 0

    @property
    def delivery_rate(self) -> float:
        return self.recipients / self.delivery if self.delivery > 0 else 0.0

    @property
    def of_ceiling(self) -> float:
        return self.delivery_rate / self.ceiling_per_second if self.ceiling_per_second else 0.0

    @property
    def docs_per_recipient(self) -> float | None:
        if self.store_docs_written is None or not self.recipients:
            return None
        return self.store_docs_written / self.recipients

    @property
    def prepare_share(self) -> float:
        return (self.audience + self.seal) / self.total if self.total else 0.0


# -- the cluster --------------------------------------------------------------------------


def install(env: dict[str, str], mongo: str, stats_dir: Path) -> None:
    cluster.install(env, NAMESPACE, RELEASE, f"{mongo.rstrip('/')}/{SYSTEM_DB}", [
        # Every worker process appends its store writes there at exit (devstack's pods are
        # local processes: they share this machine's /tmp).
        f"worker.env.PUSHTASK_STORE_STATS_FILE={stats_dir / 'writes.jsonl'}",
        # The campaign's own memory, not the chart's default limit, is what is measured.
        "worker.resources.limits.memory=4Gi",
    ])  # fmt: skip


def seed(mongo: str, size: int) -> int:
    """`size` users, every fifth inactive, and the opt-outs; returns the recipients."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo)
    try:
        db = client[AUDIENCE_DB]
        db.users.drop()
        db.optouts.drop()
        batch: list[dict[str, Any]] = []
        for i in range(size):
            batch.append({"_id": f"u{i:07d}", "active": i % 5 != 0, "plan": "pro"})
            if len(batch) == 10_000:
                db.users.insert_many(batch, ordered=False)
                batch = []
        if batch:
            db.users.insert_many(batch, ordered=False)
        active = [f"u{i:07d}" for i in range(size) if i % 5 != 0]
        excluded = active[:: max(1, len(active) // min(EXCLUDED, len(active) // 100))]
        excluded = excluded[: min(EXCLUDED, len(active) // 100)]
        db.optouts.insert_many([{"_id": u} for u in excluded])
        return len(active) - len(excluded)
    finally:
        client.close()


def manifest(name: str, url: str, workers: int) -> dict[str, Any]:
    mongo = {"kind": "mongo", "database": AUDIENCE_DB}
    return {
        "apiVersion": "pushtask.dev/v1alpha1",
        "kind": "PushTask",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "workers": workers,
            "rate": {"perSecond": 1_000_000},
            "audience": {
                "sources": [{**mongo, "collection": "users", "filter": {"active": True}}],
                "exclude": [{**mongo, "collection": "optouts"}],
            },
            "message": {
                "channel": "webhook",
                "webhook": {"url": url, "timeoutSeconds": 10},
                "template": {"title": "Sale", "body": "Hi {{ user }}, 20% off this week."},
            },
        },
    }


# -- what the processes used -----------------------------------------------------------


class RssWatch:
    """Peak RSS of the processes whose environment holds one of `markers` (sampled: a
    process's VmHWM is its own peak, read before it exits)."""

    def __init__(self) -> None:
        self.peaks: dict[str, dict[str, float]] = {}  # marker -> pid -> MiB

    def sample(self, markers: list[str]) -> None:
        wanted = [m.encode() for m in markers]
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            environ = cluster.environ(int(proc.name))
            for marker, raw in zip(markers, wanted, strict=True):
                if (
                    raw in environ
                    and (mib := cluster.memory_mib(int(proc.name), "VmHWM")) is not None
                ):
                    seen = self.peaks.setdefault(marker, {})
                    seen[proc.name] = max(seen.get(proc.name, 0.0), mib)


# -- one campaign -------------------------------------------------------------------------


def run_doc(mongo: str, uid: str) -> dict[str, Any] | None:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo)
    try:
        return client[SYSTEM_DB].runs.find_one({"task.uid": uid}, sort=[("created", -1)])
    finally:
        client.close()


def store_bytes(mongo: str, run_id: str) -> int:
    """BSON bytes of every document of the run (its run document, splits, chunks,
    workers): what a campaign leaves in the store until its ledger is pruned."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo)
    try:
        db = client[SYSTEM_DB]
        total = 0
        for name in db.list_collection_names():
            query = {"_id": run_id} if name == "runs" else {"run": run_id}
            # Small batches: a batch of chunk documents (each a recipient list) outgrows a
            # wire message at a million recipients.
            total += sum(len(bson.encode(d)) for d in db[name].find(query, batch_size=20))
        return total
    finally:
        client.close()


def seconds(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


def campaign(
    env: dict[str, str], mongo: str, sink: SinkProcess, size: int, workers: int, stats: Path
) -> Campaign:
    recipients = seed(mongo, size)
    print(f"\n{size:,} users seeded: {recipients:,} recipients", flush=True)
    ceiling = measure_ceiling(sink, [f"c{i:07d}" for i in range(min(recipients, CEILING_MAX))])
    name = f"bench-{size}"
    sh("kubectl", "delete", RESOURCE, name, "-n", NAMESPACE, "--ignore-not-found",
       "--wait=true", env=env)  # fmt: skip
    writes = stats / "writes.jsonl"
    writes.unlink(missing_ok=True)
    sink.reset()
    op_pod = cluster.operator_pod(env, NAMESPACE)
    watch = RssWatch()
    applied = time.time()
    sh(
        "kubectl",
        "apply",
        "-f",
        "-",
        env=env,
        input=yaml.safe_dump(manifest(name, sink.url, workers)),
    )
    uid = sh("kubectl", "get", RESOURCE, name, "-n", NAMESPACE,
             "-o=jsonpath={.metadata.uid}", env=env).strip()  # fmt: skip
    run: dict[str, Any] | None = None
    last = ""
    while True:
        run = run or run_doc(mongo, uid)
        markers = [f"POD_NAME={op_pod}"] + ([f"PUSHTASK_RUN_ID={run['_id']}"] if run else [])
        watch.sample(markers)
        status = json.loads(sh("kubectl", "get", RESOURCE, name, "-n", NAMESPACE,
                               "-o=jsonpath={.status}", env=env) or "{}")  # fmt: skip
        phase = status.get("phase")
        line = f"  {phase} {status.get('counts', {})}"
        if line != last:
            print(f"{time.time() - applied:7.1f}s{line}", flush=True)
            last = line
        if phase == "Finished":
            finished = time.time()
            break
        if phase == "Failed":
            raise RuntimeError(f"{name} Failed: {status.get('message')}")
        time.sleep(0.5)
    run = run_doc(mongo, uid)
    assert run is not None
    # Store clock vs this machine's: both local here (devstack), the same clock.
    created = run["created"].timestamp()
    audience_done, sealed, done = run["audienceDoneAt"], run["sealedAt"], run["doneAt"]
    # The workers write their counts at exit: the operator scales them to 0 at Finished.
    deadline = time.monotonic() + 120
    while (docs := store_writes(writes, workers)) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    got = sink.stats()
    rss = watch.peaks.get(f"PUSHTASK_RUN_ID={run['_id']}", {})
    op_rss = watch.peaks.get(f"POD_NAME={op_pod}", {})
    result = Campaign(
        size=size,
        recipients=recipients,
        workers=workers,
        ceiling_per_second=ceiling.rate,
        reaction=created - applied,
        audience=seconds(run["created"], audience_done),
        seal=seconds(audience_done, sealed),
        delivery=seconds(sealed, done),
        status_lag=finished - done.timestamp(),
        total=finished - applied,
        worker_rss_mib=sorted(rss.values(), reverse=True),
        operator_rss_mib=max(op_rss.values(), default=0.0),
        store_docs_written=docs,
        store_bytes=store_bytes(mongo, run["_id"]),
        delivered=int(got["delivered_users"]),
        duplicates=int(got["duplicates"]),
    )
    if result.delivered != recipients or result.duplicates:
        raise RuntimeError(f"{name}: the sink saw {got}, not {recipients:,} users once each")
    print(store_time(writes), flush=True)
    return result


def store_time(stats_file: Path, top: int = 8) -> str:
    """Where the workers' store calls spent their time, summed over the workers (their
    PUSHTASK_STORE_STATS_FILE lines): the commands that took longest in all, per collection."""
    rows: dict[str, list[float]] = {}
    for line in stats_file.read_text().splitlines():
        for key, v in (json.loads(line).get("latency") or {}).items():
            row = rows.setdefault(key, [0, 0.0, 0.0])
            row[0] += v["calls"]
            row[1] += v["ms"]
            row[2] = max(row[2], v["max_ms"])
    out = ["store time of the workers, by command and collection (waiting included):"]
    for key, (calls, ms, worst) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]:
        out.append(
            f"  {key:26s} {int(calls):7,} calls {ms / 1000:8.1f} s in all"
            f" {ms / max(calls, 1):8.1f} ms mean {worst / 1000:6.1f} s at most"
        )
    return "\n".join(out)


# -- the report ---------------------------------------------------------------------------


def table(results: list[Campaign]) -> str:
    head = (
        "| users | recipients | apply to Finished s | reaction s | audience s | seal s "
        "| delivery s | status lag s | delivery /s | ceiling /s | of ceiling "
        "| audience+seal share | worker peak RSS MiB | operator peak RSS MiB "
        "| store docs written / recipient | store bytes / recipient | at the sink |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- | ---: | ---: | ---: | --- |\n"
    )
    rows = []
    for r in results:
        dpr = r.docs_per_recipient
        rows.append(
            f"| {r.size:,} | {r.recipients:,} | {r.total:.1f} | {r.reaction:.1f} "
            f"| {r.audience:.1f} | {r.seal:.1f} | {r.delivery:.1f} | {r.status_lag:.1f} "
            f"| {r.delivery_rate:,.0f} | {r.ceiling_per_second:,.0f} | {r.of_ceiling:.0%} "
            f"| {r.prepare_share:.0%} | {' / '.join(f'{m:.0f}' for m in r.worker_rss_mib)} "
            f"| {r.operator_rss_mib:.0f} | {'-' if dpr is None else f'{dpr:.3f}'} "
            f"| {r.store_bytes / max(1, r.recipients):.1f} "
            f"| each once ({r.delivered:,}) |"
        )
    return head + "\n".join(rows) + "\n"


def growth(results: list[Campaign]) -> str:
    """Each cost per recipient against the smallest size's: 1.0x is linear growth."""
    if len(results) < 2:
        return ""
    base = results[0]

    def per(r: Campaign, v: float) -> float:
        return v / r.recipients

    lines = ["| users | audience | seal | delivery | worker RSS | store bytes |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in results:
        cells = []
        for attr in ("audience", "seal", "delivery"):
            b = per(base, getattr(base, attr))
            cells.append(f"{per(r, getattr(r, attr)) / b:.2f}x" if b else "-")
        rss_b = per(base, max(base.worker_rss_mib, default=0))
        rss = per(r, max(r.worker_rss_mib, default=0))
        cells.append(f"{rss / rss_b:.2f}x" if rss_b else "-")
        bytes_b = per(base, base.store_bytes)
        cells.append(f"{per(r, r.store_bytes) / bytes_b:.2f}x" if bytes_b else "-")
        lines.append(f"| {r.size:,} | " + " | ".join(cells) + " |")
    return (
        "Per recipient, against the smallest size (1.00x: the cost grows linearly; below: "
        "better):\n\n" + "\n".join(lines) + "\n"
    )


def plot(results: list[Campaign], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r.recipients for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for attr, label in (("audience", "audience"), ("seal", "seal"), ("delivery", "delivery"),
                        ("total", "apply to Finished")):  # fmt: skip
        left.plot(sizes, [getattr(r, attr) for r in results], marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="recipients", ylabel="seconds",
             title="Time per phase")  # fmt: skip
    left.legend()
    right.plot(sizes, [max(r.worker_rss_mib, default=0) for r in results], marker="o",
               label="worker peak RSS (MiB)")  # fmt: skip
    right.plot(sizes, [r.operator_rss_mib for r in results], marker="o",
               label="operator peak RSS (MiB)")  # fmt: skip
    right.plot(sizes, [r.store_bytes / 2**20 for r in results], marker="o",
               label="store (MiB)")  # fmt: skip
    right.set(xscale="log", yscale="log", xlabel="recipients", title="Memory and store")
    right.legend()
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000000", help="users in the collection, comma-separated")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--from-json", type=Path, help="report and plot an earlier run's --json")
    args = p.parse_args(argv)
    if args.from_json:
        report(
            [Campaign(**c) for c in json.loads(args.from_json.read_text())],
            args.markdown,
            args.plot,
        )
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    env = devstack_env()
    mongo = env["PUSHTASK_MONGO_URI"]
    stats = Path(tempfile.mkdtemp(prefix="pushtask-bench-"))
    os.chmod(stats, 0o777)
    install(env, mongo, stats)
    results = []
    with SinkProcess() as sink:
        for size in sizes:
            results.append(campaign(env, mongo, sink, size, args.workers, stats))
            print(table(results[-1:]), flush=True)
            if args.json:  # after each size: a later one failing loses nothing measured
                args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    cluster.clear(env, NAMESPACE)
    report(results, args.markdown, args.plot)
    return 0


def report(results: list[Campaign], markdown: Path | None, plot_to: Path | None) -> None:
    text = table(results) + "\n" + growth(results)
    print("\n" + text)
    if markdown:
        markdown.write_text(text)
    if plot_to:
        plot(results, plot_to)


if __name__ == "__main__":
    sys.exit(main())
