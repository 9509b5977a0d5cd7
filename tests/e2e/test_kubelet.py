"""devstack's local kubelet against the real control plane: pods as local processes.

Each test talks to the real kube-apiserver through the real kubectl; the pods' processes
run on this machine, so the test reaches them at their loopback pod IPs and reads the
marker files they write.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from devstack import stack
from devstack.testing import Kubectl

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        bool(os.environ.get("PUSHTASK_E2E_KUBECONFIG")),
        reason="exercises devstack's local kubelet (pods as local processes)",
    ),
]

T = TypeVar("T")

# A tiny HTTP server bound to the pod IP; on SIGTERM it leaves a marker file and exits.
WEB = textwrap.dedent("""
    import http.server, os, pathlib, signal, sys
    name, ip, marks = os.environ["POD_NAME"], os.environ["POD_IP"], os.environ["MARKER_DIR"]
    def term(*_):
        pathlib.Path(marks, name + ".term").write_text("SIGTERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    print("serving on", ip, flush=True)
    http.server.HTTPServer((ip, 8080), H).serve_forever()
""")


def wait_for(
    what: str, fn: Callable[[], T | None], timeout: float = 60, interval: float = 0.5
) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (AssertionError, OSError, KeyError, ValueError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")


def pods(k: Kubectl, selector: str | None = None) -> list[dict[str, Any]]:
    args = ["get", "pods"] + (["-l", selector] if selector else [])
    return list(k.json(*args)["items"])


def pod(k: Kubectl, name: str) -> dict[str, Any]:
    return dict(k.json("get", "pod", name))


def is_ready(p: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in p.get("status", {}).get("conditions", [])
    )


def container_status(p: dict[str, Any]) -> dict[str, Any]:
    return dict(p["status"]["containerStatuses"][0])


def http_get(ip: str, port: int = 8080) -> str:
    with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=5) as resp:
        return str(resp.read().decode())


def web_deployment(marker_dir: Path, replicas: int = 2) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 10,
                        "containers": [
                            {
                                "name": "web",
                                "image": "python:3.11-slim",  # ignored by devstack
                                "command": ["python", "-c", WEB],
                                "ports": [{"name": "http", "containerPort": 8080}],
                                "env": [
                                    {
                                        "name": "POD_NAME",
                                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                    },
                                    {
                                        "name": "POD_IP",
                                        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                                    },
                                    {"name": "MARKER_DIR", "value": str(marker_dir)},
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/", "port": "http"},
                                    "periodSeconds": 1,
                                },
                            }
                        ],
                    },
                },
            },
        }
    )


def sleeper_pod(name: str, **container: Any) -> str:
    """A pod whose one container sleeps; `container` adds fields (probes, say) to it."""
    sleep = ["python", "-c", "import time; time.sleep(3600)"]
    c = {"name": "c", "image": "ignored", "command": sleep, **container}
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [c]},
        }
    )


def ready_web_pods(k: Kubectl, count: int) -> list[dict[str, Any]] | None:
    items = [
        p
        for p in pods(k, "app=web")
        if p["status"].get("phase") == "Running"
        and is_ready(p)
        and not p["metadata"].get("deletionTimestamp")
    ]
    return items if len(items) == count else None


@pytest.fixture
def k(kubectl: Kubectl, namespace: str) -> Kubectl:
    return kubectl.in_namespace(namespace)


def test_two_replicas_serve_the_same_port_on_their_pod_ips(
    k: Kubectl, namespace: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    k.apply(web_deployment(tmp_path))
    running = wait_for("2 ready web pods", lambda: ready_web_pods(k, 2))
    latency = time.monotonic() - started
    ips = [p["status"]["podIP"] for p in running]
    assert len(set(ips)) == 2 and all(ip.startswith("127.") for ip in ips)
    for p in running:
        assert p["status"]["podIPs"] == [{"ip": p["status"]["podIP"]}]
        assert p["spec"]["nodeName"] == "devstack"
        assert p["status"]["startTime"]
        cs = container_status(p)
        assert "running" in cs["state"] and cs["ready"] is True and cs["restartCount"] == 0
        # Both bind port 8080, each on its own address, and answer with their own name.
        assert http_get(p["status"]["podIP"]) == p["metadata"]["name"]
        log = (
            stack.Paths(stack.state_root()).kubelet_state
            / "pods"
            / namespace
            / p["metadata"]["name"]
            / "web.log"
        )
        assert "serving on " + p["status"]["podIP"] in log.read_text()
        # The same through the API server, which proxies to the kubelet's log endpoint.
        assert "serving on" in k("logs", p["metadata"]["name"]).stdout
    print(f"2 replicas ready {latency:.1f}s after apply")


def test_deleting_a_pod_sends_sigterm_and_it_is_replaced(k: Kubectl, tmp_path: Path) -> None:
    k.apply(web_deployment(tmp_path))
    first = wait_for("2 ready web pods", lambda: ready_web_pods(k, 2))
    victim = first[0]["metadata"]["name"]
    victim_ip = first[0]["status"]["podIP"]
    started = time.monotonic()
    k("delete", "pod", victim, "--wait=false")
    marker = tmp_path / f"{victim}.term"
    # Its content, not only the file: the pod's handler creates it, then writes it.
    wait_for(
        "the SIGTERM marker",
        lambda: marker.exists() and marker.read_text(),
        timeout=30,
        interval=0.1,
    )
    assert marker.read_text() == "SIGTERM"
    # The kubelet removes the object once the process has gone (grace period 0 delete).
    wait_for(
        f"pod {victim} to be gone",
        lambda: victim not in {p["metadata"]["name"] for p in pods(k)},
        timeout=30,
    )
    gone = time.monotonic() - started
    second = wait_for("a replacement pod", lambda: ready_web_pods(k, 2))
    names = {p["metadata"]["name"] for p in second}
    assert victim not in names
    replacement = next(p for p in second if p["metadata"]["name"] != first[1]["metadata"]["name"])
    assert replacement["status"]["podIP"] != victim_ip  # a freed IP is not reused at once
    assert http_get(replacement["status"]["podIP"]) == replacement["metadata"]["name"]
    print(f"deleted pod gone after {gone:.1f}s")


RBAC_PROBE = textwrap.dedent("""
    import os, pathlib, time
    from kubernetes import client, config
    out = pathlib.Path(os.environ["MARKER_DIR"], "status")
    config.load_kube_config()  # from $KUBECONFIG, written by the kubelet
    api = client.CoreV1Api()
    while True:
        try:
            api.list_namespaced_config_map(os.environ["NS"])
            code = 200
        except client.ApiException as e:
            code = e.status
        out.write_text(str(code))
        time.sleep(0.5)
""")


def test_the_pod_token_is_subject_to_rbac(k: Kubectl, namespace: str, tmp_path: Path) -> None:
    k("create", "serviceaccount", "reader")
    k.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "rbac"},
                "spec": {
                    "serviceAccountName": "reader",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "probe",
                            "image": "ignored",
                            "command": [sys.executable, "-c", RBAC_PROBE],
                            "env": [
                                {"name": "MARKER_DIR", "value": str(tmp_path)},
                                {
                                    "name": "NS",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                                },
                            ],
                        }
                    ],
                },
            }
        )
    )
    status = tmp_path / "status"
    wait_for("403 without a Role", lambda: status.exists() and status.read_text() == "403")
    k("create", "role", "cm-reader", "--verb=list", "--resource=configmaps")
    k(
        "create",
        "rolebinding",
        "cm-reader",
        "--role=cm-reader",
        f"--serviceaccount={namespace}:reader",
    )
    wait_for("200 once bound", lambda: status.read_text() == "200")
    # The kubeconfig holds a token of the pod's own ServiceAccount, bound to the pod.
    kubeconfig = (
        stack.Paths(stack.state_root()).kubelet_state / "pods" / namespace / "rbac" / "kubeconfig"
    )
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    review = k.json("auth", "whoami", f"--kubeconfig={kubeconfig}")
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:reader"
    assert review["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"] == [
        "rbac"
    ]


ENV_DUMP = (
    "import json, os, pathlib; "
    "pathlib.Path(os.environ['OUT']).write_text(json.dumps({**os.environ, '_cwd': os.getcwd()}))"
)


def test_env_from_secrets_configmaps_and_fields(k: Kubectl, namespace: str, tmp_path: Path) -> None:
    k(
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=s3cret",
        "--from-literal=user=app",
    )
    k("create", "configmap", "cfg", "--from-literal=MODE=fast", "--from-literal=LEVEL=3")

    def dump_pod(name: str, automount: bool | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "dump",
                    "image": "ignored",
                    "command": ["python", "-c", ENV_DUMP],
                    "workingDir": str(tmp_path),
                    "envFrom": [
                        {"configMapRef": {"name": "cfg"}},
                        {"secretRef": {"name": "db"}, "prefix": "DB_"},
                    ],
                    "env": [
                        {"name": "OUT", "value": str(tmp_path / f"{name}.json")},
                        {
                            "name": "PW",
                            "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}},
                        },
                        {
                            "name": "MODE",
                            "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}},
                        },
                        {
                            "name": "NOPE",
                            "valueFrom": {
                                "configMapKeyRef": {"name": "missing", "key": "x", "optional": True}
                            },
                        },
                        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "URL", "value": "http://$(IP):80/$(MODE)"},
                    ],
                }
            ],
        }
        if automount is not None:
            spec["automountServiceAccountToken"] = automount
        k.apply(
            json.dumps(
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
            )
        )
        done = wait_for(
            f"pod {name} Succeeded",
            lambda: (p := pod(k, name))["status"].get("phase") == "Succeeded" and p,
        )
        assert container_status(done)["state"]["terminated"]["exitCode"] == 0
        env: dict[str, Any] = json.loads((tmp_path / f"{name}.json").read_text())
        env["_pod_ip"] = done["status"]["podIP"]
        return env

    env = dump_pod("env")
    assert env["PW"] == "s3cret" and env["DB_password"] == "s3cret" and env["DB_user"] == "app"
    assert env["MODE"] == "fast" and env["LEVEL"] == "3" and "NOPE" not in env
    assert env["IP"] == env["_pod_ip"] and env["NODE"] == "devstack"
    assert env["URL"] == f"http://{env['IP']}:80/fast"
    assert env["_cwd"] == str(tmp_path)  # workingDir exists here: used
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert "KUBERNETES_SERVICE_HOST" not in env
    assert env["KUBECONFIG"].endswith(f"/pods/{namespace}/env/kubeconfig")
    assert "KUBECONFIG" not in dump_pod("nokube", automount=False)


def test_readiness_probe_gates_ready(k: Kubectl, tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    k.apply(
        sleeper_pod(
            "gated",
            readinessProbe={
                "exec": {"command": ["test", "-f", str(flag)]},
                "periodSeconds": 1,
                "failureThreshold": 1,
            },
        )
    )
    wait_for("Running", lambda: pod(k, "gated")["status"].get("phase") == "Running")
    time.sleep(2)
    assert not is_ready(pod(k, "gated"))
    flag.touch()
    wait_for("Ready", lambda: is_ready(pod(k, "gated")), timeout=20)
    flag.unlink()
    wait_for("not Ready again", lambda: not is_ready(pod(k, "gated")), timeout=20)


def test_startup_probe_holds_readiness_until_it_passes(k: Kubectl, tmp_path: Path) -> None:
    flag = tmp_path / "started"
    k.apply(
        sleeper_pod(
            "slowstart",
            startupProbe={
                "exec": {"command": ["test", "-f", str(flag)]},
                "periodSeconds": 1,
                "failureThreshold": 60,
            },
        )
    )
    wait_for("Running", lambda: pod(k, "slowstart")["status"].get("phase") == "Running")
    time.sleep(2)
    cs = container_status(pod(k, "slowstart"))
    assert cs["started"] is False and cs["ready"] is False
    flag.touch()
    wait_for(
        "started and Ready",
        lambda: (cs := container_status(pod(k, "slowstart")))["started"] and cs["ready"],
        timeout=20,
    )
    assert container_status(pod(k, "slowstart"))["restartCount"] == 0


def test_crashing_container_restarts_with_backoff(k: Kubectl) -> None:
    k.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "crash"},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "c",
                            "image": "ignored",
                            "command": [
                                "python",
                                "-c",
                                "print('boom', flush=True); raise SystemExit(3)",
                            ],
                        }
                    ],
                },
            }
        )
    )
    seen_backoff = wait_for(
        "CrashLoopBackOff",
        lambda: (
            (cs := container_status(pod(k, "crash")))["state"].get("waiting", {}).get("reason")
            == "CrashLoopBackOff"
            and cs
        ),
        timeout=60,
        interval=0.2,
    )
    seen_at = time.monotonic()
    assert seen_backoff["lastState"]["terminated"]["exitCode"] == 3
    # The first restart is immediate; the back-off starts after the second exit (unless a
    # tiny --backoff-base let the polling miss that first back-off).
    restarts = seen_backoff["restartCount"]
    assert restarts >= 1
    match = re.search(r"back-off (\d+(?:\.\d+)?)s", seen_backoff["state"]["waiting"]["message"])
    assert match is not None
    delay = float(match.group(1))
    later = wait_for(
        "the restart after the back-off",
        lambda: (cs := container_status(pod(k, "crash")))["restartCount"] > restarts and cs,
        timeout=delay + 30,
        interval=0.2,
    )
    waited = time.monotonic() - seen_at
    assert waited >= delay - 1.5, (waited, delay)
    print(f"restart after a {delay:g}s back-off came {waited:.1f}s after it was seen")
    assert later["lastState"]["terminated"]["reason"] == "Error"
    assert "boom" in k("logs", "crash", "--previous").stdout
    assert pod(k, "crash")["status"]["phase"] == "Running"


def test_restart_policy_never_fails_the_pod(k: Kubectl) -> None:
    k.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "once"},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "c",
                            "image": "ignored",
                            "command": ["python", "-c", "raise SystemExit(7)"],
                        }
                    ],
                },
            }
        )
    )
    failed = wait_for(
        "Failed", lambda: (p := pod(k, "once"))["status"].get("phase") == "Failed" and p
    )
    cs = container_status(failed)
    assert cs["state"]["terminated"]["exitCode"] == 7 and cs["restartCount"] == 0


def test_liveness_probe_restarts_the_container(k: Kubectl) -> None:
    k.apply(
        sleeper_pod(
            "live",
            livenessProbe={"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 2},
        )
    )
    restarted = wait_for(
        "a restart by the liveness probe",
        lambda: (cs := container_status(pod(k, "live")))["restartCount"] >= 1 and cs,
        timeout=60,
    )
    assert restarted["lastState"]["terminated"]["message"] == "failed liveness probe"


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(k: Kubectl) -> None:
    k.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "stubborn"},
                "spec": {
                    "terminationGracePeriodSeconds": 3,
                    "containers": [
                        {
                            "name": "c",
                            "image": "ignored",
                            "command": [
                                "python",
                                "-c",
                                "import signal, time; "
                                "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)",
                            ],
                        }
                    ],
                },
            }
        )
    )
    wait_for("Running", lambda: pod(k, "stubborn")["status"].get("phase") == "Running")
    started_event = next(
        e
        for e in k.json("get", "events")["items"]
        if e["involvedObject"]["name"] == "stubborn" and e["reason"] == "Started"
    )
    match = re.search(r"pid (\d+)", started_event["message"])
    assert match is not None
    pid = int(match.group(1))
    started = time.monotonic()
    k("delete", "pod", "stubborn", "--wait=false")
    wait_for(
        "the pod to be gone",
        lambda: "stubborn" not in {p["metadata"]["name"] for p in pods(k)},
        timeout=30,
        interval=0.2,
    )
    took = time.monotonic() - started
    assert 2.5 <= took < 20, took  # SIGKILL after the 3 s grace period, then removed
    assert not Path(f"/proc/{pid}").exists()


def test_prestop_hook_runs_before_sigterm(k: Kubectl, tmp_path: Path) -> None:
    events = tmp_path / "events"
    main = (
        "import pathlib, signal, sys, time\n"
        "def term(*_):\n"
        f"    with open({str(events)!r}, 'a') as f: f.write('sigterm\\n')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "time.sleep(3600)\n"
    )
    hook = f"with open({str(events)!r}, 'a') as f: f.write('prestop\\n')"
    k.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "hooked"},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "containers": [
                        {
                            "name": "c",
                            "image": "x",
                            "command": ["python", "-c", main],
                            "lifecycle": {"preStop": {"exec": {"command": ["python", "-c", hook]}}},
                        }
                    ],
                },
            }
        )
    )
    wait_for("Running", lambda: pod(k, "hooked")["status"].get("phase") == "Running")
    k("delete", "pod", "hooked", "--wait=false")
    wait_for(
        "the pod to be gone",
        lambda: "hooked" not in {p["metadata"]["name"] for p in pods(k)},
        timeout=30,
    )
    assert events.read_text().split() == ["prestop", "sigterm"]


def test_init_containers_run_first_in_order(k: Kubectl, tmp_path: Path) -> None:
    out = tmp_path / "order"
    step = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    k.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "inits"},
                "spec": {
                    "restartPolicy": "Never",
                    "initContainers": [
                        {
                            "name": "one",
                            "image": "x",
                            "command": ["python", "-c", step, str(out), "one"],
                        },
                        {
                            "name": "two",
                            "image": "x",
                            "command": ["python", "-c", step, str(out), "two"],
                        },
                    ],
                    "containers": [
                        {
                            "name": "main",
                            "image": "x",
                            "command": ["python", "-c", step, str(out), "main"],
                        }
                    ],
                },
            }
        )
    )
    done = wait_for(
        "Succeeded", lambda: (p := pod(k, "inits"))["status"].get("phase") == "Succeeded" and p
    )
    assert out.read_text().split() == ["one", "two", "main"]
    assert [
        s["state"]["terminated"]["exitCode"] for s in done["status"]["initContainerStatuses"]
    ] == [0, 0]


def test_deleting_a_pod_during_its_init_container_stops_it(k: Kubectl, tmp_path: Path) -> None:
    marker = tmp_path / "init.term"
    trap = (
        "import pathlib, signal, sys, time\n"
        "def term(*_):\n"
        f"    pathlib.Path({str(marker)!r}).write_text('TERM'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "time.sleep(3600)\n"
    )
    k.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "slowinit"},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "initContainers": [
                        {"name": "wait", "image": "x", "command": ["python", "-c", trap]}
                    ],
                    "containers": [{"name": "main", "image": "x", "command": ["sleep", "3600"]}],
                },
            }
        )
    )
    wait_for(
        "the init container to run",
        lambda: (
            "running"
            in pod(k, "slowinit")["status"].get("initContainerStatuses", [{}])[0].get("state", {})
        ),
    )
    assert pod(k, "slowinit")["status"]["phase"] == "Pending"
    k("delete", "pod", "slowinit", "--wait=false")
    wait_for("SIGTERM in the init container", marker.exists, timeout=20, interval=0.1)
    wait_for(
        "the pod to be gone",
        lambda: "slowinit" not in {p["metadata"]["name"] for p in pods(k)},
        timeout=20,
    )


SIDECAR = textwrap.dedent("""
    import http.server, os, pathlib, signal, sys
    marks = os.environ["MARKER_DIR"]
    def term(*_):
        pathlib.Path(marks, "sidecar.term").write_text("SIGTERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"from the sidecar")
        def log_message(self, *a):
            pass
    http.server.HTTPServer((os.environ["POD_IP"], 8081), H).serve_forever()
""")

CLIENT = textwrap.dedent("""
    import os, pathlib, urllib.request
    url = "http://" + os.environ["POD_IP"] + ":8081/"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    pathlib.Path(os.environ["MARKER_DIR"], "main.out").write_text(body)
""")


def test_native_sidecar_serves_the_containers_and_stops_after_them(
    k: Kubectl, tmp_path: Path
) -> None:
    env = [
        {"name": "MARKER_DIR", "value": str(tmp_path)},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    k.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "withsidecar"},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "initContainers": [
                        {
                            "name": "side",
                            "image": "x",
                            "restartPolicy": "Always",
                            "command": ["python", "-c", SIDECAR],
                            "env": env,
                            # The container starts only once the sidecar answers.
                            "startupProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 1},
                        }
                    ],
                    "containers": [
                        {
                            "name": "main",
                            "image": "x",
                            "command": ["python", "-c", CLIENT],
                            "env": env,
                        }
                    ],
                },
            }
        )
    )
    done = wait_for(
        "Succeeded",
        lambda: (p := pod(k, "withsidecar"))["status"].get("phase") == "Succeeded" and p,
    )
    assert (tmp_path / "main.out").read_text() == "from the sidecar"
    wait_for("SIGTERM in the sidecar", (tmp_path / "sidecar.term").exists, timeout=20)
    side = done["status"]["initContainerStatuses"][0]
    assert side["name"] == "side" and side["restartCount"] == 0


# --- a second kubelet of our own, to kill and restart without touching the shared one ---


class SecondKubelet:
    """``python -m devstack.kubelet`` for a node of its own, tainted so nothing else lands on
    it; its identity is a client certificate signed by the cluster CA, as the stack does."""

    def __init__(self, admin_kubeconfig: Path, root: Path) -> None:
        self.name = f"devstack-t{os.getpid() % 10000}-{int(time.time()) % 100000}"
        self.root = root
        self.state = root / "state"
        self.kubeconfig = root / "node.kubeconfig"
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_identity(admin_kubeconfig)

    def use_server(self, server: str) -> None:
        """Reach the API server at another address (a proxy the test can cut)."""
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["clusters"][0]["cluster"]["server"] = server
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def _write_identity(self, admin_kubeconfig: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        pki_dir = stack.Paths(stack.state_root()).root / "pki"
        ca = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                        x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{self.name}"),
                    ]
                )
            )
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(ca_key, hashes.SHA256())
        )
        config = yaml.safe_load(admin_kubeconfig.read_text())
        config["users"][0]["user"] = {
            "client-certificate-data": base64.b64encode(
                cert.public_bytes(serialization.Encoding.PEM)
            ).decode(),
            "client-key-data": base64.b64encode(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            ).decode(),
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def start(self) -> None:
        with open(self.root / "kubelet.log", "ab") as log:  # the child has its own copy
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "devstack.kubelet",
                    f"--kubeconfig={self.kubeconfig}",
                    f"--node-name={self.name}",
                    f"--state-dir={self.state}",
                    "--port=0",
                    "--pod-network=127.11.0.0/16",
                    "--shutdown-grace=5",
                    "--register-with-taints=devstack.test/private=true:NoSchedule",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def second_kubelet(kubeconfig: Path, kubectl: Kubectl, tmp_path: Path) -> Iterator[SecondKubelet]:
    kubelet = SecondKubelet(kubeconfig, tmp_path)
    try:
        yield kubelet
    finally:
        if kubelet.proc is not None:
            kubelet.kill(signal.SIGTERM)
        kubectl("delete", "node", kubelet.name, "--ignore-not-found", "--wait=false")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


PIDS = textwrap.dedent("""
    import os, pathlib, subprocess, sys, time
    child = subprocess.Popen(["sleep", "3600"])
    pathlib.Path(sys.argv[1]).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(3600)
""")


def test_kubelet_restart_cleans_up_and_restarts_its_pods(
    k: Kubectl, second_kubelet: SecondKubelet, tmp_path: Path
) -> None:
    node = second_kubelet.name
    second_kubelet.start()
    wait_for(
        "the second node to be Ready",
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in k.json("get", "node", node)["status"]["conditions"]
        ),
    )
    pids = tmp_path / "pids"
    k.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "survivor"},
                "spec": {
                    "nodeName": node,
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {
                            "name": "c",
                            "image": "ignored",
                            "command": ["python", "-c", PIDS, str(pids)],
                        }
                    ],
                },
            }
        )
    )

    def running_with_new_pids(
        previous: str, previous_id: str = ""
    ) -> tuple[dict[str, Any], list[int]] | None:
        # The process writes its pids before the kubelet's status patch lands: wait for
        # both, the new pids and a status that names the new container.
        p = pod(k, "survivor")
        text = pids.read_text() if pids.exists() else ""
        if p["status"].get("phase") != "Running" or not text or text == previous:
            return None
        statuses = p["status"].get("containerStatuses") or [{}]
        if "running" not in statuses[0].get("state", {}):
            return None
        if statuses[0].get("containerID", "") in ("", previous_id):
            return None
        return p, [int(x) for x in text.split()]

    first, first_pids = wait_for("Running", lambda: running_with_new_pids(""))
    first_id = container_status(first)["containerID"]
    ip = first["status"]["podIP"]
    assert ip.startswith("127.11.")

    # A crashed kubelet leaves its processes running; the next one stops them (child too)
    # and starts the container again, on the same pod IP.
    second_kubelet.kill(signal.SIGKILL)
    assert all(alive(pid) for pid in first_pids)
    second_kubelet.start()
    again, second_pids = wait_for(
        "a restart", lambda: running_with_new_pids(" ".join(map(str, first_pids)), first_id)
    )
    assert not any(alive(pid) for pid in first_pids)
    assert again["status"]["podIP"] == ip
    assert container_status(again)["restartCount"] == 1

    # A kubelet stopped with SIGTERM stops its pods' processes and leaves nothing behind.
    second_kubelet.kill(signal.SIGTERM)
    assert not any(alive(pid) for pid in second_pids)
    assert pod(k, "survivor")["status"]["phase"] == "Running"  # the pod itself stays

    second_kubelet.start()
    wait_for("Running once more", lambda: running_with_new_pids(" ".join(map(str, second_pids))))
    k("delete", "pod", "survivor", "--wait=false")
    wait_for(
        "the pod to be gone",
        lambda: "survivor" not in {p["metadata"]["name"] for p in pods(k)},
        timeout=30,
    )


PROXY = textwrap.dedent("""
    import asyncio, sys
    listen, upstream = int(sys.argv[1]), int(sys.argv[2])
    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
    async def handle(reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", listen, reuse_address=True)
        print("ready", flush=True)
        await server.serve_forever()
    asyncio.run(main())
""")


class Proxy:
    """A TCP forwarder to the API server; killing it cuts every connection through it."""

    def __init__(self, upstream_port: int) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.upstream = upstream_port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROXY, str(self.port), str(self.upstream)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def test_kubelet_rides_out_an_api_server_outage(
    k: Kubectl, kubeconfig: Path, second_kubelet: SecondKubelet, tmp_path: Path
) -> None:
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    proxy = Proxy(int(server.rsplit(":", 1)[1]))
    proxy.start()
    try:
        second_kubelet.use_server(f"https://127.0.0.1:{proxy.port}")
        second_kubelet.start()
        node = second_kubelet.name
        wait_for(
            "the node to be Ready",
            lambda: any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in k.json("get", "node", node)["status"]["conditions"]
            ),
        )

        def sleeper(name: str) -> str:
            return json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name},
                    "spec": {
                        "nodeName": node,
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {
                                "name": "c",
                                "image": "ignored",
                                "command": ["python", "-c", "import time; time.sleep(3600)"],
                            }
                        ],
                    },
                }
            )

        k.apply(sleeper("before"))
        wait_for("Running", lambda: pod(k, "before")["status"].get("phase") == "Running")

        proxy.stop()  # the kubelet loses its watch, lease renewals and status posts
        k("delete", "pod", "before", "--wait=false")
        k.apply(sleeper("during"))
        time.sleep(5)
        assert pod(k, "during")["status"].get("phase") == "Pending"
        proxy.start()

        # After the outage it sees both changes: stops and removes one, starts the other.
        wait_for(
            "the deleted pod to be gone",
            lambda: "before" not in {p["metadata"]["name"] for p in pods(k)},
            timeout=60,
        )
        wait_for(
            "the new pod to run",
            lambda: pod(k, "during")["status"].get("phase") == "Running",
            timeout=60,
        )
        lease = k.json("get", "lease", "-n", "kube-node-lease", node)
        renewed = datetime.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
        age = datetime.datetime.now(datetime.UTC) - renewed
        assert age.total_seconds() < 15, age
        k("delete", "pod", "during", "--wait=false")
        wait_for("cleanup", lambda: not pods(k), timeout=30)
    finally:
        proxy.stop()
