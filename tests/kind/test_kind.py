"""The chart on a real node: containers, their limits and security settings, pod network,
cluster DNS and Services, and the product's promises under real signals.

Four scenarios are test_operator_e2e's own, run here unchanged on the kind node (a
campaign to Finished with every user once at the webhook sink, which the pods reach over
the kind network; pause and resume; stop and a new run; the scale subresource). The rest
can only be seen on a real node.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_cli_e2e import kubectl_push
from tests.e2e.test_operator_e2e import (  # noqa: F401  (collected here too: run on kind)
    Env,
    assert_each_once,
    push_task,
    test_campaign_finishes_each_user_exactly_once,
    test_pause_stops_sending_and_resume_finishes,
    test_scale_subresource_drives_the_deployment,
    test_stop_then_a_new_run_counts_from_zero,
    users,
    wait_for,
)
from tests.kind.conftest import RELEASE_NAMESPACE, container_pid, node

pytestmark = pytest.mark.timeout(600)

UID = "10001"
# The chart's default worker memory limit (values.yaml worker.resources.limits.memory).
WORKER_MEMORY_LIMIT = 256 * 1024 * 1024
# A worker's send concurrency: the most a lost worker can leave in doubt (docs/architecture.md).
WINDOW = 64


def running_worker(env: Env, name: str) -> str:
    """The name of a Running, Ready worker pod of task `name`."""

    def ready() -> str | None:
        for pod in env.worker_pods(name):
            statuses = pod["status"].get("containerStatuses") or []
            if statuses and all(s.get("ready") for s in statuses):
                return str(pod["metadata"]["name"])
        return None

    return wait_for(f"a ready worker of {name}", ready, 120)


def slow_task(env: Env, name: str, *, workers: int = 1) -> str:
    """A task that keeps its workers busy for minutes (the caller stops it); a worker pod."""
    env.apply(push_task(name, env.sink.url, users(3000), workers=workers, rate=10))
    return running_worker(env, name)


def exec_in(
    env: Env, pod: str, *cmd: str, namespace: str | None = None
) -> subprocess.CompletedProcess[str]:
    k = env.kubectl if namespace is None else env.kubectl.in_namespace(namespace)
    return k("exec", pod, "--", *cmd, check=False, timeout=90)


# -- what only a real node shows --------------------------------------------------------------


def test_every_container_is_non_root_on_a_read_only_root_filesystem(
    env: Env, release_pods: dict[str, str]
) -> None:
    worker = slow_task(env, "secure")
    pods = [
        (RELEASE_NAMESPACE, release_pods["pushtask-operator"]),
        (RELEASE_NAMESPACE, release_pods["pushtask-console"]),
        (env.namespace, worker),
    ]
    for ns, pod in pods:
        ident = exec_in(env, pod, "id", namespace=ns)
        assert ident.returncode == 0, ident.stderr
        assert ident.stdout.startswith(f"uid={UID}(") and f"gid={UID}(" in ident.stdout, (
            pod,
            ident.stdout,
        )
        write = exec_in(env, pod, "touch", "/probe", namespace=ns)
        assert write.returncode != 0 and "Read-only file system" in write.stderr, (pod, write)
        # The one writable place is the emptyDir on /tmp, where the pod mounts one.
        spec = env.kubectl.in_namespace(ns).json("get", "pod", pod)["spec"]["containers"][0]
        if any(m["mountPath"] == "/tmp" for m in spec.get("volumeMounts") or []):
            assert exec_in(env, pod, "touch", "/tmp/probe", namespace=ns).returncode == 0, pod
        else:
            print(f"\n{pod}: no /tmp volume, nothing writable at all")
        # Every capability dropped: the effective set of the main process is empty.
        caps = exec_in(env, pod, "grep", "CapEff", "/proc/1/status", namespace=ns).stdout
        assert caps.split() == ["CapEff:", "0000000000000000"], (pod, caps)
    env.patch_spec("secure", state="Stopped")


def test_the_worker_memory_limit_is_a_real_cgroup_limit(env: Env) -> None:
    worker = slow_task(env, "bounded")
    # cgroup v1 (these machines) or v2: the container sees its own memory cgroup.
    v1, v2 = "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"
    limit = exec_in(env, worker, "sh", "-c", f"cat {v1} 2>/dev/null || cat {v2}")
    assert int(limit.stdout.strip()) == WORKER_MEMORY_LIMIT, limit
    # And the kernel enforces it: 400 MiB touched in the worker's container is OOM-killed
    # (exit 137), while the worker itself (a small process) keeps running.
    restarts = env.kubectl.json("get", "pod", worker)["status"]["containerStatuses"][0][
        "restartCount"
    ]
    hog = exec_in(env, worker, "python3", "-c", "b = b'x' * (400 << 20); print(len(b))")
    assert hog.returncode == 137 and hog.stdout == "", hog
    after = env.kubectl.json("get", "pod", worker)["status"]["containerStatuses"][0]
    assert after["restartCount"] == restarts and after["ready"], after
    env.patch_spec("bounded", state="Stopped")


def test_workers_reach_mongodb_and_the_console_by_service_dns(env: Env) -> None:
    worker = slow_task(env, "dns")
    k = env.kubectl.in_namespace(RELEASE_NAMESPACE)
    mongo_ip = k.json("get", "service", "pushtask-mongodb")["spec"]["clusterIP"]
    dns_ip = env.kubectl.in_namespace("kube-system").json("get", "service", "kube-dns")["spec"][
        "clusterIP"
    ]
    uri = exec_in(env, worker, "printenv", "PUSHTASK_MONGO_URI").stdout.strip()
    assert f"pushtask-mongodb.{RELEASE_NAMESPACE}.svc:27017" in uri
    resolv = exec_in(env, worker, "cat", "/etc/resolv.conf").stdout
    assert f"nameserver {dns_ip}" in resolv, resolv
    console = f"http://pushtask-console.{RELEASE_NAMESPACE}.svc:8080/"
    probe = (
        "import socket, sys, urllib.request\n"
        f"print(socket.gethostbyname('pushtask-mongodb.{RELEASE_NAMESPACE}.svc'))\n"
        f"r = urllib.request.urlopen('{console}', timeout=10)\n"
        "print(r.status, r.headers.get('Content-Type'))\n"
    )
    out = exec_in(env, worker, "python3", "-c", probe)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == mongo_ip, lines
    assert lines[1].startswith("200 text/html"), lines
    # The worker really is connected to MongoDB at that Service: its run is under way.
    wait_for("sends through the Service's MongoDB", lambda: len(env.delivered()) > 5, 60)
    env.patch_spec("dns", state="Stopped")


def test_a_worker_killed_with_sigkill_inside_the_node_leaves_at_most_one_window(
    env: Env, tmp_path: Path
) -> None:
    """kill -9 of one worker's process (from the node, as the OOM killer or a crash does),
    20,000 recipients, 4 workers: the container restarts in its pod, the lost lease is
    reclaimed, at most one send window is in doubt (unknown, AtMostOnce) and nobody is
    delivered twice."""
    audience = users(20_000)
    listing = tmp_path / "users.txt"
    listing.write_text("\n".join(audience) + "\n")
    env.kubectl("create", "configmap", "lossy-audience", f"--from-file=users.txt={listing}")
    task = push_task("lossy", env.sink.url, [], workers=4, rate=2000)
    task["spec"]["audience"] = {
        "shards": 16,
        "sources": [{"kind": "configMap", "name": "lossy-audience", "key": "users.txt"}],
    }
    env.apply(task)
    wait_for("sending under way", lambda: len(env.delivered()) > 4000, 240)
    victim = running_worker(env, "lossy")
    pid = container_pid(env.namespace, victim, "worker")
    node("kill", "-9", str(pid))
    wait_for(
        "the killed container restarted",
        lambda: (
            env.kubectl.json("get", "pod", victim)["status"]["containerStatuses"][0]["restartCount"]
            >= 1
        ),
        60,
    )
    state = env.kubectl.json("get", "pod", victim)["status"]["containerStatuses"][0]
    assert state["lastState"]["terminated"]["exitCode"] == 137, state
    status = env.wait_phase("lossy", "Finished", 300)
    got = env.delivered()
    assert not [u for u, c in got.items() if c > 1], "a user was delivered twice"
    counts = status["counts"]
    assert counts["sent"] + counts["unknown"] == counts["audience"] == 20_000
    assert counts["sent"] <= len(got) <= counts["sent"] + counts["unknown"]
    assert counts["unknown"] <= WINDOW, f"{counts['unknown']} in doubt: more than one window"
    print(f"\nkill -9 of 1 of 4 workers at 20,000 on kind: {counts['unknown']} in doubt")


class PodWatch:
    """`kubectl get pods -w` on a thread: the last state seen of every pod, so that the
    terminated state of a pod that is gone a moment later is still known."""

    def __init__(self, env: Env, selector: str) -> None:
        self.last: dict[str, dict[str, Any]] = {}
        self.gone: dict[str, float] = {}
        self.proc = subprocess.Popen(
            [str(env.kubectl.binary), f"--kubeconfig={env.kubectl.kubeconfig}",
             f"--namespace={env.namespace}", "get", "pods", "-l", selector,
             "--watch", "--output-watch-events", "-o", "json"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        decoder, buf = json.JSONDecoder(), ""
        for line in self.proc.stdout:
            buf += line
            while buf.strip():
                try:
                    event, end = decoder.raw_decode(buf.lstrip())
                except ValueError:
                    break
                buf = buf.lstrip()[end:]
                pod = event["object"]
                name = pod["metadata"]["name"]
                self.last[name] = pod
                if event["type"] == "DELETED":
                    self.gone[name] = time.monotonic()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_a_scale_down_sends_sigterm_and_the_window_is_handed_back(env: Env) -> None:
    """Scale 3 -> 1 mid-run: the kubelet sends SIGTERM to two workers; each finishes its
    in-flight window and gives its split back (exit 0) within the grace period; nothing is
    left in doubt and everyone is delivered once."""
    audience = users(6000)
    env.apply(push_task("shrink", env.sink.url, audience, workers=3, rate=300))
    wait_for("3 workers ready", lambda: len(env.worker_pods("shrink")) == 3, 120)
    wait_for("sending under way", lambda: len(env.delivered()) > 600, 180)
    watch = PodWatch(env, "app.kubernetes.io/name=pushtask-worker,pushtask.dev/task=shrink")
    try:
        time.sleep(1)  # the watch's first listing
        before = {p["metadata"]["name"] for p in env.worker_pods("shrink")}
        grace = env.worker_pods("shrink")[0]["spec"]["terminationGracePeriodSeconds"]
        scaled = time.monotonic()
        env.patch_spec("shrink", workers=1)
        wait_for(
            "two workers gone",
            lambda: len([n for n in before if n in watch.gone]) == 2,
            grace + 30,
        )
        stopped = [n for n in before if n in watch.gone]
        for name in stopped:
            took = watch.gone[name] - scaled
            assert took < grace, f"{name} took {took:.1f}s, grace {grace}s"
            term = watch.last[name]["status"]["containerStatuses"][0]["state"].get("terminated")
            assert term and term["exitCode"] == 0, f"{name}: {watch.last[name]['status']}"
            print(f"\n{name}: SIGTERM -> exit 0 in {took:.1f}s (grace {grace}s)")
    finally:
        watch.close()
    status = env.wait_phase("shrink", "Finished", 300)
    assert_each_once(env, audience)
    assert status["counts"]["unknown"] == 0 and status["counts"]["sent"] == 6000


def test_kubectl_push_status_and_recipient_on_kind(env: Env) -> None:
    """The plugin against the kind cluster: status follows the run to Finished; recipient
    reads the ledger in the cluster's MongoDB through a port-forward to its Service."""
    audience = users(300, "c")
    env.apply(push_task("watched", env.sink.url, audience, workers=2, rate=150))
    k, ns = env.kubectl, env.namespace
    proc = kubectl_push(k, "-n", ns, "status", "watched", timeout=180)
    assert proc.returncode == 0 and "Finished" in proc.stdout.splitlines()[-1], proc
    pf = subprocess.Popen(
        [str(k.binary), f"--kubeconfig={k.kubeconfig}", "-n", RELEASE_NAMESPACE,
         "port-forward", "svc/pushtask-mongodb", ":27017"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert pf.stdout is not None
        line = pf.stdout.readline()
        port = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert port, line
        uri = f"mongodb://127.0.0.1:{port.group(1)}/pushtask"
        proc = kubectl_push(k, "-n", ns, "recipient", "watched", "c-00042", "--mongo-uri", uri)
        assert proc.returncode == 0, proc.stderr
        fields = dict(line.split(":", 1) for line in proc.stdout.splitlines())
        assert fields["status"].strip() == "sent" and fields["attempts"].strip() == "1"
        assert fields["worker"].strip().startswith("watched-worker-")
    finally:
        pf.terminate()
        pf.wait(10)
