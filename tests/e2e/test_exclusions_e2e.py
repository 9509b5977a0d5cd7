"""Exclusions fail closed, on devstack (issue 21, items 3, 4 and 6a).

The issue's two repros, as a user meets them: what the excluded users received is counted
at the webhook sink (it must be 0), and the task's phase, condition and Events say why.
Then a PushTask deleted while MongoDB is down: it waits for its ledger to be deleted.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from pymongo import MongoClient

from tests.e2e.release import RESOURCE, release
from tests.e2e.test_operator_e2e import (
    Env,
    env,  # noqa: F401  (the operator suite's fixture: a release, a sink)
    kill_processes_of,
    push_task,
    users,
    wait_for,
)
from tests.e2e.test_operator_resilience_e2e import OwnMongo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

AUDIENCE = users(200)
OPTED_OUT = AUDIENCE[:100]


def received(task_env: Env, who: list[str], run: int | None = None) -> int:
    """Messages the sink received for `who` (any answer: a send is a send)."""
    wanted = set(who)
    return sum(
        1 for r in task_env.sink.requests if r.user in wanted and (run is None or r.run == run)
    )


def condition(task_env: Env, name: str, ctype: str = "Ready") -> dict[str, Any]:
    conditions = task_env.status(name).get("conditions") or []
    return next((c for c in conditions if c.get("type") == ctype), {})


def warnings(task_env: Env, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in task_env.events(name) if e["type"] == "Warning" and e["reason"] == reason]


def restart_operator(task_env: Env) -> None:
    """SIGKILL the operator (devstack: its pod is a local process); return once a new pod
    has resumed the namespace's tasks (kopf's "Resuming is processed" in its log)."""
    label = "app.kubernetes.io/name=pushtask-operator"
    pods = task_env.kubectl.json("get", "pods", "-l", label)
    (operator,) = [p["metadata"]["name"] for p in pods["items"]]
    if not os.environ.get("PUSHTASK_E2E_KUBECONFIG"):
        assert kill_processes_of(operator) >= 1
    task_env.kubectl("delete", "pod", operator, "--grace-period=0", "--force", "--wait=false")

    def resumed() -> bool:
        items = task_env.kubectl.json("get", "pods", "-l", label)["items"]
        for name in [p["metadata"]["name"] for p in items if p["metadata"]["name"] != operator]:
            logs = task_env.kubectl("logs", name, check=False).stdout
            if "Resuming is processed" in logs:
                return True
        return False

    wait_for("a new operator that resumed the tasks", resumed, 180, every=2)


def test_repro_a_configmap_exclusion_deleted_between_cron_firings(env: Env) -> None:  # noqa: F811
    """A cron task excluding a ConfigMap's users; after the first run the ConfigMap is
    deleted. Before: the next firing sent to 94 of the 100 excluded users and Finished.
    Now: the firing is held with the condition creation gives, a Warning Event, no run and
    no send, also across an operator restart; the ConfigMap back, the held run starts."""
    env.kubectl(
        "create", "configmap", "optouts",
        "--from-literal=users.txt=" + "\n".join(OPTED_OUT) + "\n",
    )  # fmt: skip
    task = push_task("weekly", env.sink.url, AUDIENCE, workers=2)
    task["spec"]["schedule"] = {"cron": "* * * * *"}
    task["spec"]["audience"]["exclude"] = [
        {"kind": "configMap", "name": "optouts", "key": "users.txt"}
    ]
    env.apply(task)
    wait_for(
        "run 1 over",
        lambda: env.status("weekly").get("run") == 1 and env.phase("weekly") == "Ready",
        150,
    )
    assert received(env, OPTED_OUT) == 0
    assert sorted(u for u in env.delivered(1) if u) == AUDIENCE[100:]

    env.kubectl("delete", "configmap", "optouts")
    held = wait_for(
        "the next firing held",
        lambda: (s := env.status("weekly")).get("reason") == "ConfigMapMissing" and s,
        90,
    )
    ready = condition(env, "weekly")
    print(f"held: phase {held['phase']}, reason {held['reason']}: {held['message']}")
    assert held["run"] == 1 and held["phase"] == "Ready", held
    assert ready["status"] == "False" and ready["reason"] == "ConfigMapMissing", ready
    assert 'ConfigMap "optouts" (spec.audience.exclude[0]) not found' in ready["message"]
    assert warnings(env, "weekly", "ConfigMapMissing"), env.events("weekly")
    assert env.replicas("weekly") == 0

    restart_operator(env)  # a new operator resumes the task: still held, still nothing sent
    time.sleep(5)
    after = env.status("weekly")
    assert after["run"] == 1 and after["reason"] == "ConfigMapMissing", after
    excluded_received = received(env, OPTED_OUT)
    print(f"repro (a): excluded users received {excluded_received} (run 1 and the held firing)")
    assert excluded_received == 0
    assert received(env, AUDIENCE, run=2) == 0

    # The ConfigMap back: the held firing starts its run, with the exclusion applied.
    env.kubectl(
        "create", "configmap", "optouts",
        "--from-literal=users.txt=" + "\n".join(OPTED_OUT) + "\n",
    )  # fmt: skip
    wait_for(
        "run 2 over",
        lambda: env.status("weekly").get("run") == 2 and env.phase("weekly") == "Ready",
        150,
    )
    assert received(env, OPTED_OUT) == 0
    assert sorted(u for u in env.delivered(2) if u) == AUDIENCE[100:]
    env.patch_spec("weekly", state="Stopped")


def test_repro_b_mongo_exclusion_with_a_typo_fails_and_sends_nothing(env: Env) -> None:  # noqa: F811
    """An exclusion `kind: mongo` naming `optuts` for `optouts`. Before: all 100 excluded
    users received the message, Finished. Now: Failed before the first send, the reason
    naming the exclusion; fixed and restarted, the run excludes them."""
    client: MongoClient[dict[str, Any]] = MongoClient(env.mongo_uri)
    try:
        client.get_default_database()["optouts"].insert_many([{"_id": u} for u in OPTED_OUT])
    finally:
        client.close()
    task = push_task("typo", env.sink.url, AUDIENCE, workers=2)
    task["spec"]["audience"]["exclude"] = [{"kind": "mongo", "collection": "optuts"}]
    env.apply(task)
    failed = env.wait_phase("typo", "Failed", 120)
    print(
        f"repro (b): excluded users received {received(env, OPTED_OUT)}, anyone "
        f"{len(env.sink.requests)}; phase {failed['phase']}, reason {failed['reason']}: "
        f"{failed['message']}"
    )
    assert received(env, OPTED_OUT) == 0 and len(env.sink.requests) == 0
    assert failed["reason"] == "RunFailed"
    assert "exclusion spec.audience.exclude[0] (mongo optuts)" in failed["message"]
    assert "does not exist" in failed["message"]
    assert warnings(env, "typo", "RunFailed"), env.events("typo")

    # Fixed, and a new run (`kubectl push restart` raises spec.run the same way).
    exclude = [{"kind": "mongo", "collection": "optouts"}]
    audience = {**task["spec"]["audience"], "exclude": exclude}
    env.patch_spec("typo", audience=audience, run=2)
    # Until the operator has started run 2, the status still shows run 1's failure.
    wait_for("run 2 started", lambda: env.status("typo").get("run") == 2, 60)
    env.wait_phase("typo", "Finished", 180)
    assert received(env, OPTED_OUT) == 0
    assert sorted(u for u in env.delivered(2) if u) == AUDIENCE[100:]


def test_a_task_deleted_while_mongodb_is_down_waits_until_its_ledger_is_deleted(
    kubectl: Any, helm: Any, namespace: str, own_mongo: OwnMongo
) -> None:
    db_uri = own_mongo.uri("e2e_delete")
    with release(kubectl, helm, namespace, db_uri) as qenv:
        qenv.apply(push_task("doomed", qenv.sink.url, users(50), workers=1))
        status = qenv.wait_phase("doomed", "Finished", 180)
        uid = qenv.task("doomed")["metadata"]["uid"]

        def runs() -> int:
            client: MongoClient[dict[str, Any]]
            with MongoClient(db_uri, serverSelectionTimeoutMS=5000) as client:
                return client.get_default_database()["runs"].count_documents({"task.uid": uid})

        assert runs() == 1 and status["runId"]

        own_mongo.stop()
        qenv.kubectl("delete", RESOURCE, "doomed", "--wait=false")

        def waiting() -> dict[str, Any] | None:
            obj = qenv.task("doomed")
            ready: dict[str, Any] = next(
                (c for c in obj["status"].get("conditions") or [] if c["type"] == "Ready"), {}
            )
            return obj if ready.get("reason") == "LedgerNotDeleted" else None

        obj = wait_for("the deletion waiting for MongoDB", waiting, 90)
        assert obj["metadata"].get("deletionTimestamp")
        assert "pushtask.dev/finalizer" in obj["metadata"]["finalizers"]
        time.sleep(15)  # kopf retries; the task stays while the store is away
        assert qenv.task("doomed")["metadata"]["uid"] == uid

        own_mongo.start()

        def gone() -> bool:
            proc = qenv.kubectl("get", RESOURCE, "doomed", "-o", "json", check=False)
            return proc.returncode != 0 and "NotFound" in (proc.stderr + proc.stdout)

        wait_for("the task gone once its ledger is deleted", gone, 120)
        assert runs() == 0
        left = json.dumps(obj["status"].get("conditions"))
        print(f"deleted with MongoDB down: waited with {left[:300]}")
