"""What a run survives on devstack: the API server restarted, MongoDB down for 30 s, a worker
Deployment the API server refuses.

Only what a user sees is checked (kubectl, the status, Events, the operator's log and
the webhook sink), so these tests hold whatever the ledger underneath looks like.

The API server test stops devstack's one kube-apiserver: for its ~30 s every client of the
shared cluster waits (kubectl fails, watches reconnect), so do not run it beside another
session's end-to-end tests. The MongoDB test stops a server of its own.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import build, stack
from tests.e2e.release import QualifiedEnv, on_devstack, release
from tests.e2e.test_operator_e2e import (
    assert_each_once,
    database_uri,
    push_task,
    users,
    wait_for,
)
from tests.support.sink import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

APISERVER = "kube-apiserver"
# What kopf logs (with a traceback, then its default back-off) for an exception a handler
# did not classify: the error policy leaves none of those.
UNEXPECTED = "failed with an exception"


@pytest.fixture
def shared_env(kubectl: Any, helm: Any, namespace: str, mongo_uri: str) -> Iterator[QualifiedEnv]:
    """The chart for this test's namespace on the shared MongoDB (as the `env` fixture)."""
    on_devstack()
    db = database_uri(mongo_uri, f"e2e_{namespace.replace('-', '_')}"[:60])
    with release(kubectl, helm, namespace, db) as env:
        yield env


def restart_apiserver(down_for: float) -> float:
    """Stop devstack's kube-apiserver, wait `down_for` s, start it again; seconds it was
    unreachable. The new process keeps the old one's owner, so the session that started
    the stack (not this test) is the one that stops it."""
    current = stack.Stack().pids.read(APISERVER)
    assert current is not None and current.alive(), "devstack's kube-apiserver is not running"
    stopped_at = time.monotonic()
    stack.Stack().down([APISERVER])
    time.sleep(down_for)
    stack.Stack(started_by=current.started_by).up([APISERVER])
    return time.monotonic() - stopped_at


def test_api_server_restarted_mid_run_status_catches_up(shared_env: QualifiedEnv) -> None:
    env = shared_env
    audience = users(3000)
    # 100/s: about 30 s of sending, so the outage falls in the middle.
    env.apply(push_task("steady", env.sink.url, audience, workers=2, rate=100))
    wait_for("sending under way", lambda: len(env.delivered()) > 400, 180)
    before = env.status("steady")["counts"]["sent"]
    at_stop = len(env.delivered())
    outage = restart_apiserver(down_for=10)
    during = len(env.delivered()) - at_stop
    # Workers need only MongoDB: they kept sending while the API server was away.
    assert during > 0, "nothing was sent while the API server was down"

    status = env.wait_phase("steady", "Finished", 300)
    counts = status["counts"]
    assert counts["sent"] == 3000 > before, counts  # the status caught up after the outage
    assert counts["failed"] == counts["unknown"] == counts["pending"] == 0, counts
    assert_each_once(env, audience)
    wait_for("workers scaled to 0", lambda: env.status("steady")["workers"]["desired"] == 0)
    ready = env.condition("steady", "Ready")
    assert ready["status"] == "True", ready
    # Through the policy: a timer tick that found the API server away was a temporary
    # error with a delay (kopf: "failed temporarily"), never an unexpected exception.
    logs = env.operator_logs()
    assert "API server unreachable" in logs and "retrying in" in logs, logs[-3000:]
    assert UNEXPECTED not in logs, logs[-3000:]
    # A just-started API server refuses (403) until its RBAC caches fill: a moment that
    # must not reach the task as a problem.
    shown = [e for e in env.events("steady") if e["reason"].startswith("Api")]
    assert not shown, shown
    print(f"API server away {outage:.1f}s; {during} sends meanwhile; sent {before} before")


class OwnMongo:
    """A mongo-java-server of this test's own (devstack's binary, its own port and H2 data
    file): stopping it disturbs no other test on the shared stack."""

    def __init__(self, data: Path) -> None:
        self.port = free_port()
        self.data = data
        self.argv = [str(build.tool_path("mongo-java-server")), "127.0.0.1", str(self.port)]
        self.proc: subprocess.Popen[bytes] | None = None

    def uri(self, database: str) -> str:
        return f"mongodb://127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        with self.data.with_suffix(".log").open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.argv, str(self.data)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.proc.poll() is None, self.data.with_suffix(".log").read_text()[-2000:]
            time.sleep(0.2)
        raise AssertionError("the test's mongo-java-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # it writes its data file out on SIGTERM
            self.proc.wait(30)
        self.proc = None


def test_mongodb_down_for_30s_mid_run_nothing_fails_nobody_twice(
    kubectl: Any, helm: Any, namespace: str, own_mongo: OwnMongo
) -> None:
    # Leases (and heartbeats) outlive the outage: the holders keep their shards through it,
    # so nothing is left in doubt and every user is sent exactly once.
    lease = "worker.leaseSeconds=60"
    with release(kubectl, helm, namespace, own_mongo.uri("e2e_outage"), lease) as env:
        audience = users(3000)
        env.apply(push_task("outage", env.sink.url, audience, workers=2, rate=100))
        wait_for("sending under way", lambda: len(env.delivered()) > 400, 180)
        own_mongo.stop()
        at_stop = len(env.delivered())
        time.sleep(30)
        # A worker sends at most the batch it holds once the store is gone.
        during = len(env.delivered()) - at_stop
        assert env.phase("outage") == "Started"
        own_mongo.start()

        status = env.wait_phase("outage", "Finished", 300)
        counts = status["counts"]
        assert counts["failed"] == 0, counts
        assert counts["sent"] == counts["audience"] == 3000, counts
        assert counts["unknown"] == counts["pending"] == 0, counts
        assert_each_once(env, audience)
        reasons = {e["reason"] for e in env.events("outage")}
        assert "RunFailed" not in reasons and "WorkerLost" not in reasons, reasons
        print(f"MongoDB away 30 s after {at_stop} sends; {during} sends meanwhile")


def test_refused_worker_deployment_degrades_once_then_recovers(
    kubectl: Any, helm: Any, namespace: str, mongo_uri: str
) -> None:
    """422 on the worker Deployment (requests above limits, from the chart's values): a
    Degraded condition and one Warning Event, and the operator does not resend it."""
    on_devstack()
    db = database_uri(mongo_uri, f"e2e_{namespace.replace('-', '_')}"[:60])
    bad = ["worker.resources.requests.cpu=2", "worker.resources.limits.cpu=1"]
    with release(kubectl, helm, namespace, db, *bad) as env:
        env.apply(push_task("refused", env.sink.url, users(200), workers=1))

        def degraded() -> dict[str, Any] | None:
            cond = env.condition("refused", "Degraded")
            return cond if cond.get("reason") == "DeploymentRejected" else None

        cond = wait_for("a Degraded condition", degraded, 90)
        assert cond["status"] == "True" and "cpu limit" in cond["message"], cond
        ready = env.condition("refused", "Ready")
        assert ready["status"] == "False" and ready["reason"] == "DeploymentRejected", ready
        time.sleep(8)  # eight progress ticks (operator.progressInterval=1)
        warnings = [e for e in env.events("refused") if e["reason"] == "DeploymentRejected"]
        assert len(warnings) == 1 and warnings[0]["type"] == "Warning", warnings
        assert "cpu limit" in warnings[0]["message"]
        assert env.deployment("refused") is None
        # No retry storm: the refused body was sent once, not once per tick.
        logs = env.operator_logs()
        assert logs.count("HTTP 422") == 1, logs[-3000:]
        assert UNEXPECTED not in logs, logs[-3000:]

        # Fixed values: a new operator (its settings changed) applies the Deployment.
        helm(
            "upgrade", env.release, str(Path(__file__).parents[2] / "charts" / "pushtask"),
            "--namespace", namespace, "--reuse-values",
            "--set", "worker.resources.requests.cpu=100m", "--set", "worker.resources.limits.cpu=1",
            "--wait", timeout=240,
        )  # fmt: skip
        env.wait_phase("refused", "Finished", 180)
        assert len(env.delivered()) == 200
        assert env.condition("refused", "Degraded")["status"] == "False"
        assert env.condition("refused", "Ready")["status"] == "True"
