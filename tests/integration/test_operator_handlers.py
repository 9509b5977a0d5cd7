"""The operator's reconcile against a real MongoDB-wire server, with an in-memory cluster.

Workers are simulated with the store's own operations (claim, stage, seal, record a
batch, record outcomes), so these tests check what the operator makes of real run data:
run creation, progress, Finished, a lost worker (Reboot and back), pause, fair share.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Awaitable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import kopf
import pytest
from pymongo import MongoClient

from pushtask.leases import now_utc
from pushtask.models import PushTaskSpec
from pushtask.store import Store
from pushtask_operator.handlers import Runtime, on_delete, reconcile
from pushtask_operator.settings import OperatorSettings
from tests.support.ledger_steps import deliver, seal_all, stage_audience
from tests.support.status import check_status_patch
from tests.support.workers import PrivateMongo

pytestmark = pytest.mark.integration
T = TypeVar("T")
NS = "shop"


class FakeKube:
    """The few API calls the operator makes, kept in memory; Deployments become ready."""

    def __init__(self) -> None:
        self.secrets: dict[str, set[str]] = {"pushtask-mongodb": {"uri"}}
        self.configmaps: dict[str, dict[str, str]] = {}
        self.accounts = {"pushtask-worker"}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.statuses: dict[str, dict[str, Any]] = {}
        self.ready_cap: int | None = None  # fewer ready pods than desired (a lost pod)
        self.patches: list[dict[str, Any]] = []

    async def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        return self.secrets.get(name)

    async def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.configmaps.get(name)

    async def service_account_exists(self, namespace: str, name: str) -> bool:
        return name in self.accounts

    async def probe_url(self, url: str) -> str | None:
        return None

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        dep = self.deployments.get(name)
        if dep is None:
            return None
        dep = copy.deepcopy(dep)
        n = dep["spec"]["replicas"]
        ready = n if self.ready_cap is None else min(n, self.ready_cap)
        dep["status"] = {"replicas": n, "readyReplicas": ready, "updatedReplicas": n}
        return dep

    async def apply_deployment(self, body: dict[str, Any]) -> None:
        self.deployments[body["metadata"]["name"]] = copy.deepcopy(body)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        # What the API server would prune silently fails the test here.
        check_status_patch(status)
        self.patches.append(copy.deepcopy(status))
        current = self.statuses.setdefault(name, {})
        for key, value in status.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = copy.deepcopy(value)


class Cluster:
    def __init__(self, store: Store, settings: OperatorSettings) -> None:
        self.kube = FakeKube()
        self.events: list[tuple[str, str, str]] = []
        self.rt = Runtime(
            settings=settings,
            store=store,
            kube=self.kube,  # type: ignore[arg-type]
            events=lambda body, t, r, m: self.events.append((body["metadata"]["name"], r, m)),
        )
        self.tasks: dict[str, dict[str, Any]] = {}
        self.memos: dict[str, kopf.Memo] = {}

    def apply(self, name: str, **spec: Any) -> None:
        full = PushTaskSpec.model_validate(spec).model_dump(
            by_alias=True, mode="json", exclude_none=True
        )
        old = self.tasks.get(name)
        meta: dict[str, Any] = (
            old["metadata"]
            if old
            else {
                "name": name,
                "namespace": NS,
                "uid": uuid.uuid4().hex,
                "generation": 0,
                "creationTimestamp": now_utc().strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
        meta["generation"] += 1
        self.tasks[name] = {"metadata": meta, "spec": full}
        self.memos.setdefault(name, kopf.Memo())

    def patch(self, name: str, **spec: Any) -> None:
        merged = {**self.tasks[name]["spec"], **spec}
        self.apply(name, **merged)

    async def tick(self, name: str) -> dict[str, Any]:
        body = {**self.tasks[name], "status": copy.deepcopy(self.kube.statuses.get(name, {}))}
        await reconcile(self.rt, body, self.memos[name])
        return self.kube.statuses[name]

    def replicas(self, name: str) -> int:
        return int(self.kube.deployments[f"{name}-worker"]["spec"]["replicas"])

    def reasons(self, name: str) -> list[str]:
        return [r for n, r, _ in self.events if n == name]


def run(coro: Awaitable[T]) -> T:
    async def wrapped() -> T:
        return await coro

    return asyncio.run(wrapped())


@pytest.fixture
def db_name(mongo_uri: str) -> Iterator[str]:
    name = f"op_{uuid.uuid4().hex[:12]}"
    yield name
    MongoClient(mongo_uri).drop_database(name)


def task_spec(users: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "workers": 3,
        "audience": {"shards": 4, "sources": [{"kind": "inline", "users": users}]},
        "message": {
            "webhook": {"url": "http://sink/hook"},
            "template": {"body": "Hi {{ user }}"},
        },
        **extra,
    }


async def read_audience(store: Store, run_id: str, worker: str) -> None:
    await stage_audience(store, run_id, worker)
    await store.advance(run_id)
    await seal_all(store, run_id, worker)
    await store.advance(run_id)


def test_run_lifecycle_to_finished(mongo_uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings(lease_seconds=10))
        users = [f"u{i}" for i in range(500)]
        c.apply("sale", **task_spec(users))

        status = await c.tick("sale")
        assert status["phase"] == "Started" and status["run"] == 1
        run_id = status["runId"]
        assert c.replicas("sale") == 3
        assert await store.get_run(run_id) is not None
        assert c.reasons("sale") == ["StartTimeReached"]

        await store.heartbeat("w1", run_id)
        await read_audience(store, run_id, "w1")
        status = await c.tick("sale")
        assert status["counts"]["audience"] == 500 and status["counts"]["pending"] == 500
        assert status["workers"] == {"desired": 3, "ready": 3, "live": 1}

        assert await deliver(store, run_id, "w1") == 500
        await store.forget_worker("w1")
        status = await c.tick("sale")
        assert status["phase"] == "Finished"
        assert status["counts"]["sent"] == 500 and status["counts"]["pending"] == 0
        assert status["finishedAt"] and c.replicas("sale") == 0
        assert c.reasons("sale")[-1] == "RunFinished"
        run_doc = await store.get_run(run_id)
        assert run_doc is not None and run_doc["control"]["state"] == "Stopped"

        # A new run: counts from zero, a new run document.
        c.patch("sale", run=2)
        status = await c.tick("sale")
        assert status["run"] == 2 and status["runId"] != run_id
        assert status["counts"]["sent"] == 0 and status["phase"] == "Started"
        assert c.replicas("sale") == 3
        assert len(c.kube.patches) >= 4  # each one checked against the status model
        await store.close()

    run(scenario())


def test_a_run_that_ends_between_two_heartbeats_is_judged_by_its_error_budget(
    mongo_uri: str, db_name: str
) -> None:
    """Every send refused, the run over before any worker's heartbeat judged it: Failed
    with the budget's reason, not Finished."""

    async def scenario() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings(lease_seconds=10))
        c.apply("refused", **task_spec([f"u{i}" for i in range(200)]))
        run_id = (await c.tick("refused"))["runId"]
        await read_audience(store, run_id, "w1")
        assert await deliver(store, run_id, "w1", status="failed") == 200
        status = await c.tick("refused")
        assert status["phase"] == "Failed", status
        assert "failure budget spent: 200 of 200" in status["message"]
        assert c.reasons("refused")[-1] == "RunFailed"
        await store.close()

    run(scenario())


def test_lost_worker_reboot_and_recovery(mongo_uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings(lease_seconds=10))
        c.apply("lossy", **task_spec([f"u{i}" for i in range(300)]))
        run_id = (await c.tick("lossy"))["runId"]
        await store.heartbeat("dead", run_id)
        await store.heartbeat("alive", run_id)
        await read_audience(store, run_id, "alive")
        # "dead" sends one batch and dies holding its lease; its heartbeat goes stale.
        await deliver(store, run_id, "dead", limit=10)
        old = now_utc() - timedelta(seconds=30)
        # Time passes: its heartbeat and its lease go stale.
        await store.db["workers"].update_one({"_id": "dead"}, {"$set": {"lastSeen": old}})
        await store.db["chunks"].update_many(
            {"run": run_id, "owner": "dead"}, {"$set": {"leaseUntil": old}}
        )
        c.kube.ready_cap = 2  # its pod is gone; the replacement is not ready yet

        status = await c.tick("lossy")
        assert status["phase"] == "Reboot" and c.reasons("lossy")[-1] == "WorkerLost"
        assert all(w["_id"] != "dead" for w in await store.heartbeats(run_id))  # handled
        assert c.replicas("lossy") == 3  # Reboot keeps the workers running

        c.kube.ready_cap = None  # the Deployment is whole again, but a lease is stale
        assert (await c.tick("lossy"))["phase"] == "Reboot"

        await store.heartbeat("alive", run_id)
        await deliver(store, run_id, "alive")  # reclaims the expired lease, finishes
        status = await c.tick("lossy")
        assert status["phase"] == "Finished", status
        counts = status["counts"]
        assert counts["sent"] + counts["unknown"] == counts["audience"] == 300
        await store.close()

    run(scenario())


def test_pause_resume_and_control_block(mongo_uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings())
        c.apply("p", **task_spec(["a", "b"], rate={"perSecond": 40}))
        run_id = (await c.tick("p"))["runId"]
        c.patch("p", state="Paused")
        status = await c.tick("p")
        assert status["phase"] == "Paused" and c.replicas("p") == 0
        run_doc = await store.get_run(run_id)
        assert run_doc is not None and run_doc["control"]["state"] == "Paused"
        c.patch("p", state="Started", rate={"perSecond": 80})
        status = await c.tick("p")
        assert status["phase"] == "Started" and status["runId"] == run_id
        run_doc = await store.get_run(run_id)
        assert run_doc is not None
        assert run_doc["control"] == {
            "state": "Started",
            "cancelInflight": False,
            "ratePerSecond": 80.0,
        }
        await store.close()

    run(scenario())


def test_send_budget_is_shared_max_min_fairly(mongo_uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings(send_budget=100))
        c.apply("small", **task_spec(["a"], rate={"perSecond": 10}))
        c.apply("big", **task_spec(["b"], rate={"perSecond": 1000}))
        ids = {n: (await c.tick(n))["runId"] for n in ("small", "big")}

        async def rates() -> dict[str, float]:
            for _ in range(2):  # shares settle over the next ticks
                for n in ("small", "big"):
                    await c.tick(n)
            runs = {n: await store.get_run(i) or {} for n, i in ids.items()}
            return {n: r["control"]["ratePerSecond"] for n, r in runs.items()}

        # Both still build their audience: neither sends, so neither holds budget back from
        # the other; each starts at the share it will have, not at its full rate, and the
        # two allocations never add up to more than the budget.
        assert await rates() == {"small": 10, "big": 90}
        await read_audience(store, ids["small"], "w1")  # small sends, big still reads
        assert await rates() == {"small": 10, "big": 90}
        await read_audience(store, ids["big"], "w2")
        assert await rates() == {"small": 10, "big": 90}
        await store.close()

    run(scenario())


def test_budget_changes_hands_only_once_the_giver_reports_the_lower_rate(
    mongo_uri: str, db_name: str
) -> None:
    """A task sends with the whole budget; a second one starts. The first is lowered at
    once, but the second gets nothing until every sender of the first reports the lower
    rate (their rate beats): the two never send at more than the budget together."""

    async def scenario() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        await store.sync_clock()
        c = Cluster(store, OperatorSettings(send_budget=100))
        c.apply("first", **task_spec(["a"], rate={"perSecond": 1000}))
        first = (await c.tick("first"))["runId"]
        await read_audience(store, first, "w1")
        for _ in range(2):
            await c.tick("first")

        async def control(run_id: str) -> float:
            return float((await store.get_run(run_id) or {})["control"]["ratePerSecond"])

        async def beat(run_id: str, worker: str, applied: float) -> None:
            until = store.now() + timedelta(seconds=10)
            await store.rate_beat(run_id, worker, until, applied)

        assert await control(first) == 100
        await beat(first, "w1", 100.0)  # its sender sends at the whole budget

        c.apply("second", **task_spec(["b"], rate={"perSecond": 1000}))
        second = (await c.tick("second"))["runId"]
        await read_audience(store, second, "w2")

        def total_in_force() -> float:
            return sum(c.rt.in_force.values())

        for _ in range(3):
            for name in ("first", "second"):
                await c.tick(name)
                assert total_in_force() <= 100, c.rt.in_force
        assert await control(first) == 50  # lowered at once...
        assert await control(second) == 0  # ...but its sender still sends at 100: hold
        wakeup = c.rt.tasks[f"{NS}/second"].wakeup
        assert wakeup is not None and wakeup.reason == "BudgetHandover"
        await beat(first, "w1", 50.0)  # the sender has read the lower rate
        for name in ("first", "second"):
            await c.tick(name)
            assert total_in_force() <= 100, c.rt.in_force
        assert (await control(first), await control(second)) == (50, 50)
        await store.close()

    run(scenario())


def test_missing_secret_then_template_error(mongo_uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings())
        spec = task_spec(["a"])
        spec["message"]["webhook"]["secretRef"] = {"name": "hmac"}
        c.apply("s", **spec)
        status = await c.tick("s")
        assert status["phase"] == "Ready" and 'Secret "hmac"' in status["message"]
        assert "s-worker" not in c.kube.deployments
        c.kube.secrets["hmac"] = {"hmac"}
        await asyncio.sleep(5.1)  # problems that are waited out are looked at every 5 s
        assert (await c.tick("s"))["phase"] == "Started"

        bad = task_spec(["a"])
        bad["message"]["template"]["body"] = "{% if %}"
        c.apply("t", **bad)
        status = await c.tick("t")
        assert status["phase"] == "Failed" and "line 1" in status["message"]
        c.patch("t", message={**bad["message"], "template": {"body": "fixed {{ user }}"}})
        assert (await c.tick("t"))["phase"] == "Started"
        await store.close()

    run(scenario())


# -- issue 21: facts re-read at each run's start; deletion waits for the store; weights --


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


async def _end_run(store: Store, run_id: str) -> None:
    """Every audience split done (nothing staged), so the run goes to done at once."""
    while got := await store.claim_split(run_id, "audience", "w", 30):
        assert await store.release(got[1], done=True)
    await store.advance(run_id)
    await seal_all(store, run_id)
    assert await store.advance(run_id) == "done"


async def _runs_of(store: Store, uid: str) -> list[dict[str, Any]]:
    return [doc async for doc in store.db["runs"].find({"task.uid": uid}, {"inline": 1})]


@pytest.mark.parametrize(
    ("remove", "restore", "reason", "words"),
    [
        (
            lambda k: k.configmaps.pop("optouts"),
            lambda k: k.configmaps.__setitem__("optouts", {"list": "u1\nu2\n"}),
            "ConfigMapMissing",
            'ConfigMap "optouts" (spec.audience.exclude[0]) not found',
        ),
        (
            lambda k: k.configmaps["optouts"].pop("list"),
            lambda k: k.configmaps["optouts"].__setitem__("list", "u1\nu2\n"),
            "ConfigMapKeyMissing",
            '(spec.audience.exclude[0]) has no key "list"',
        ),
        (
            lambda k: k.accounts.clear(),
            lambda k: k.accounts.add("pushtask-worker"),
            "WorkerServiceAccountMissing",
            'ServiceAccount "pushtask-worker"',
        ),
        (
            lambda k: k.secrets.pop("pushtask-mongodb"),
            lambda k: k.secrets.__setitem__("pushtask-mongodb", {"uri"}),
            "MongoSecretMissing",
            'Secret "pushtask-mongodb"',
        ),
    ],
)
def test_each_cron_firing_rechecks_what_its_run_needs(
    mongo_uri: str, db_name: str, remove: Any, restore: Any, reason: str, words: str
) -> None:
    """Issue 21's repro (a) at the operator: the spec never changes (one generation), the
    ConfigMap of its exclusion goes between two firings. The firing is held with the same
    condition as at creation, and no run is created (nothing could be sent); when it is
    back, the held firing starts a run with the exclusion's content."""

    async def scenario() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings())
        c.kube.configmaps["optouts"] = {"list": "u1\nu2\n"}
        spec = task_spec(["u1", "u2", "u3"], schedule={"cron": "* * * * *"})
        spec["audience"]["exclude"] = [{"kind": "configMap", "name": "optouts", "key": "list"}]
        c.apply("weekly", **spec)
        meta = c.tasks["weekly"]["metadata"]
        meta["creationTimestamp"] = _iso(now_utc() - timedelta(minutes=2))  # a firing is due
        status = await c.tick("weekly")
        assert status["phase"] == "Started" and status["run"] == 1, status
        await _end_run(store, status["runId"])
        for _ in range(3):
            status = await c.tick("weekly")
        assert status["phase"] == "Ready" and status["run"] == 1, status  # the next firing

        remove(c.kube)
        # A minute goes by: the last firing handled was two minutes ago (as the API server and
        # the operator's own memory of what it wrote both say). A minute boundary that fell
        # while run 1 was live was recorded as skipped (lastSkippedAt): it goes too, or the
        # next firing is a minute away when the test crosses a boundary (a CI failure).
        fired = _iso(now_utc() - timedelta(minutes=2))
        for known in (c.kube.statuses["weekly"], c.memos["weekly"]["task"].status):
            known["lastFiredAt"] = fired
            known.pop("lastSkippedAt", None)
        status = await c.tick("weekly")
        assert status["run"] == 1 and status["phase"] == "Ready", status
        assert status["reason"] == reason and words in status["message"], status
        ready = next(x for x in status["conditions"] if x["type"] == "Ready")
        assert ready["status"] == "False" and ready["reason"] == reason
        assert reason in c.reasons("weekly")
        assert len(await _runs_of(store, meta["uid"])) == 1  # no run: nothing to send
        assert meta["generation"] == 1  # not a spec change: the firing itself re-checked

        restore(c.kube)
        await asyncio.sleep(5.1)  # a held run's problem is looked at again every 5 s
        status = await c.tick("weekly")
        assert status["phase"] == "Started" and status["run"] == 2, status
        runs = await _runs_of(store, meta["uid"])
        assert len(runs) == 2 and all(r["inline"] == {"exclude.0": "u1\nu2\n"} for r in runs)
        await store.close()

    run(scenario())


def test_a_configmap_deleted_after_validation_still_holds_the_run(
    mongo_uri: str, db_name: str
) -> None:
    """Validated at creation (generation 1), deleted before the start time: the start
    reads it again and holds; it is never copied as an empty exclusion list."""

    async def scenario() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings())
        c.kube.configmaps["optouts"] = {"list": "u1\n"}
        start = now_utc() + timedelta(seconds=2)
        spec = task_spec(["u1", "u2"], schedule={"startAt": _iso(start)})
        spec["audience"]["exclude"] = [{"kind": "configMap", "name": "optouts", "key": "list"}]
        c.apply("later", **spec)
        status = await c.tick("later")
        assert status["phase"] == "Ready" and status["reason"] == "WaitingForStart", status
        c.kube.configmaps.clear()
        await asyncio.sleep(max(0.0, (start - now_utc()).total_seconds()) + 1.1)
        status = await c.tick("later")
        assert status["phase"] == "Ready" and status["reason"] == "ConfigMapMissing", status
        assert await _runs_of(store, c.tasks["later"]["metadata"]["uid"]) == []
        await store.close()

    run(scenario())


@pytest.fixture
def private_mongo(mongo_uri: str, tmp_path: Path) -> Iterator[PrivateMongo]:
    # mongo_uri: devstack builds (and runs) mongo-java-server; this is a second one.
    server = PrivateMongo(tmp_path / "ledger.mv")
    if not server.available():
        pytest.skip("mongo-java-server is not built (python -m devstack up --only mongo)")
    server.start()
    yield server
    server.stop()


def test_deleting_a_task_while_mongodb_is_down_waits_for_the_ledger(
    private_mongo: PrivateMongo,
) -> None:
    async def scenario() -> None:
        store = Store.connect(private_mongo.uri, serverSelectionTimeoutMS=1000)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings())
        c.apply("gone", **task_spec(["a", "b"]))
        status = await c.tick("gone")
        uid = c.tasks["gone"]["metadata"]["uid"]
        assert status["phase"] == "Started" and len(await _runs_of(store, uid)) == 1
        memo = c.memos["gone"]
        memo["runtime"] = c.rt
        body = {**c.tasks["gone"], "status": c.kube.statuses["gone"]}

        private_mongo.stop()
        with pytest.raises(kopf.TemporaryError, match="MongoDB unavailable"):
            await on_delete(body, memo)  # kopf keeps the finalizer and retries
        ready = next(x for x in c.kube.statuses["gone"]["conditions"] if x["type"] == "Ready")
        assert ready["status"] == "False" and ready["reason"] == "LedgerNotDeleted", ready
        assert "finalizer stays" in ready["message"]
        patches = len(c.kube.patches)
        with pytest.raises(kopf.TemporaryError):
            await on_delete(body, memo)
        assert len(c.kube.patches) == patches  # the condition is shown once, not per retry

        private_mongo.start()
        await on_delete(body, memo)  # the retry that succeeds: kopf takes the finalizer off
        assert await _runs_of(store, uid) == []
        left = [
            await store.db[name].count_documents({"run": status["runId"]})
            for name in ("splits", "staging", "chunks", "skips", "workers")
        ]
        assert left == [0] * 5
        await store.close()

    run(scenario())


def test_budget_weights_go_when_a_task_settles_or_is_deleted(mongo_uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings(send_budget=100, fair_share_by_priority=True))
        for name in ("done", "deleted"):
            c.apply(name, **task_spec(["a"], priority=5))
            await c.tick(name)
        key = f"{NS}/done"
        assert set(c.rt.weights) == {key, f"{NS}/deleted"}

        run_id = c.kube.statuses["done"]["runId"]
        await read_audience(store, run_id, "w1")
        await deliver(store, run_id, "w1")
        status = await c.tick("done")
        assert status["phase"] == "Finished"
        status = await c.tick("done")  # its workers gone: nothing left to look at
        assert key not in c.rt.weights
        # A settled task keeps no weight, even one left by a reconcile cut short: the
        # settled path reads and writes nothing, and forgets the task's budget entries.
        c.rt.weights[key] = 5.0
        body = {**c.tasks["done"], "status": copy.deepcopy(status)}
        assert await reconcile(c.rt, body, c.memos["done"]) is None  # settled
        assert key not in c.rt.weights and key not in c.rt.demands

        memo = c.memos["deleted"]
        memo["runtime"] = c.rt
        await on_delete({**c.tasks["deleted"], "status": c.kube.statuses["deleted"]}, memo)
        assert c.rt.weights == {} and c.rt.demands == {}
        await store.close()

    run(scenario())


def test_a_tracked_run_keeps_counting_clicks_and_conversions_after_it_settles(
    mongo_uri: str, db_name: str
) -> None:
    """Clicks and conversions come after the sends: a finished, settled task's status
    keeps following them (and only them), and its next look is soon, not in an hour."""

    async def scenario() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings(lease_seconds=10))
        c.kube.secrets["tracker-key"] = {"key"}
        tracking = {
            "links": True,
            "baseUrl": "https://t.example",
            "secretRef": {"name": "tracker-key"},
        }
        spec = task_spec([f"u{i}" for i in range(40)])
        spec["message"]["tracking"] = tracking
        spec["message"]["template"]["body"] = "Hi {{ user }}: https://shop.example/sale"
        c.apply("tracked", **spec)
        run_id = (await c.tick("tracked"))["runId"]
        deployment = c.kube.deployments["tracked-worker"]
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "PUSHTASK_TRACKER_KEY", "valueFrom": {"secretKeyRef": {
            "name": "tracker-key", "key": "key"}}} in env  # fmt: skip
        await read_audience(store, run_id, "w1")
        assert await deliver(store, run_id, "w1") == 40
        status = await c.tick("tracked")
        assert status["phase"] == "Finished"
        assert (status["clicks"], status["clickers"], status["clickThrough"]) == (0, 0, "0.0%")
        assert status["conversions"] == []
        status = await c.tick("tracked")  # its workers gone: settled from here on

        await store.record_click(run_id, "u1", 0)
        await store.record_click(run_id, "u2", 0)
        await store.record_conversion(run_id, "u2", "purchase")
        patches = len(c.kube.patches)
        status = await c.tick("tracked")
        assert (status["clicks"], status["clickers"], status["clickThrough"]) == (2, 2, "5.0%")
        assert status["conversions"] == [{"event": "purchase", "count": 1, "rate": "2.5%"}]
        assert set(c.kube.patches[patches]) == {"clicks", "clickers", "clickThrough", "conversions"}
        wakeup = c.memos["tracked"]["task"].wakeup
        assert wakeup.reason == "Tracking" and wakeup.seconds(now_utc()) <= 10
        await c.tick("tracked")  # nothing new: nothing written
        assert len(c.kube.patches) == patches + 1
        await store.close()

    run(scenario())
