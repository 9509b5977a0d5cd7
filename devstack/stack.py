"""The local stack: which processes run, with which flags, and how to tell they are healthy.

All state and logs live under ``.devstack/`` in the repository root (override with
``PUSHTASK_DEVSTACK_DIR``)::

    .devstack/
      pki/                  CA, serving cert, client certs, service-account keys
      admin.kubeconfig      cluster-admin (O=system:masters)
      kubelet.kubeconfig    the node identity (CN=system:node:devstack, O=system:nodes)
      etcd/  ferretdb/      data
      kubelet/              the kubelet's state; pods/<ns>/<pod>/<container>.log
      logs/<component>.log  every component's output
      run/<component>.json  pid files (pid + start time)
"""

from __future__ import annotations

import datetime as dt
import fcntl
import importlib.util
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack import build, pki, process, versions

REPO_ROOT = Path(__file__).resolve().parent.parent
MONGO_URI = f"mongodb://127.0.0.1:{versions.MONGO_PORT}/"
FERRETDB_URI = f"mongodb://127.0.0.1:{versions.FERRETDB_PORT}/"
APISERVER_URL = f"https://127.0.0.1:{versions.APISERVER_PORT}"

GROUPS = {
    "mongo": ("mongo-java-server", "ferretdb"),
    "cluster": (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
    ),
}
# Start order; `down` goes in reverse (the kubelet first, so pods get their SIGTERM).
ORDER = (*GROUPS["mongo"], *GROUPS["cluster"])

# Every on-by-default controller ("*"): deployment, replicaset, garbage-collector,
# serviceaccount, serviceaccount-token, namespace, node-lifecycle, ... are all in it.
CONTROLLERS = "*"


class StackError(RuntimeError):
    """A component failed to start or to become healthy."""


def _log(msg: str) -> None:
    print(f"[devstack] {msg}", file=sys.stderr, flush=True)


def state_root() -> Path:
    return Path(os.environ.get("PUSHTASK_DEVSTACK_DIR", REPO_ROOT / ".devstack")).resolve()


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pki(self) -> pki.Pki:
        return pki.Pki(self.root / "pki")

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.root / "kubelet.kubeconfig"

    @property
    def kubelet_state(self) -> Path:
        return self.root / "kubelet"

    def kubeconfig_for(self, name: str) -> Path:
        return self.root / f"{name}.kubeconfig"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"


def kubelet_available() -> bool:
    return importlib.util.find_spec("devstack.kubelet.__main__") is not None


# --- health checks: each returns None when healthy, else a short reason ----------------


def _ssl_context(p: Paths, client: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(p.pki.ca_cert))
    if client:
        ctx.load_cert_chain(p.pki.client_cert(pki.ADMIN), p.pki.client_key(pki.ADMIN))
    return ctx


def _http_get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 3.0) -> bytes:
    with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def _check_http(
    url: str, ctx: ssl.SSLContext | None, expect: Callable[[bytes], bool]
) -> str | None:
    try:
        body = _http_get(url, ctx)
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"
    return None if expect(body) else f"{url}: {body[:200]!r}"


def _health_etcd(p: Paths, since: float) -> str | None:
    url = f"http://127.0.0.1:{versions.ETCD_CLIENT_PORT}/health"
    return _check_http(url, None, lambda b: json.loads(b).get("health") == "true")


def _health_apiserver(p: Paths, since: float) -> str | None:
    return _check_http(f"{APISERVER_URL}/readyz", _ssl_context(p), lambda b: b.strip() == b"ok")


def _health_secure_port(port: int) -> Callable[[Paths, float], str | None]:
    def check(p: Paths, since: float) -> str | None:
        # Anonymous is enough: /healthz is on the components' always-allowed paths.
        url = f"https://127.0.0.1:{port}/healthz"
        return _check_http(url, _ssl_context(p, client=False), lambda b: b.strip() == b"ok")

    return check


def _health_ferretdb(p: Paths, since: float) -> str | None:
    return mongo_ping(FERRETDB_URI)


def _health_mongo_java(p: Paths, since: float) -> str | None:
    return mongo_ping(MONGO_URI)


def mongo_ping(uri: str) -> str | None:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient[dict[str, object]] = MongoClient(
        uri, serverSelectionTimeoutMS=1500, connectTimeoutMS=1500
    )
    try:
        client.admin.command("ping")
        return None
    except PyMongoError as exc:
        return f"ping {uri}: {exc}"
    finally:
        client.close()


def _parse_time(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _health_kubelet(p: Paths, since: float) -> str | None:
    """The node is Ready and its Lease was renewed by *this* kubelet process.

    A Node keeps its last Ready condition after its kubelet dies (until the node-lifecycle
    controller notices, ~40 s later), so Ready alone would pass on a stale object.
    """
    node_name = versions.NODE_NAME
    try:
        ctx = _ssl_context(p)
        node = json.loads(_http_get(f"{APISERVER_URL}/api/v1/nodes/{node_name}", ctx))
        lease = json.loads(
            _http_get(
                f"{APISERVER_URL}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/"
                f"leases/{node_name}",
                ctx,
            )
        )
    except urllib.error.HTTPError as exc:
        return f"node {node_name}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"node {node_name}: {exc}"
    renewed = lease.get("spec", {}).get("renewTime")
    # 1 s of slack: renewTime and our clock are the same host's, but rounded differently.
    if not renewed or _parse_time(renewed) < since - 1:
        return f"lease of node {node_name} not renewed since the kubelet started"
    duration = lease.get("spec", {}).get("leaseDurationSeconds") or 40
    if _parse_time(renewed) + duration < time.time():
        return f"lease of node {node_name} expired (last renewed {renewed})"
    for cond in node.get("status", {}).get("conditions", []):
        if cond.get("type") == "Ready":
            return None if cond.get("status") == "True" else f"node not Ready: {cond}"
    return f"node {node_name} has no Ready condition yet"


# --- command lines ---------------------------------------------------------------------


def _argv_etcd(p: Paths) -> list[str]:
    client = f"http://127.0.0.1:{versions.ETCD_CLIENT_PORT}"
    peer = f"http://127.0.0.1:{versions.ETCD_PEER_PORT}"
    return [
        str(build.tool_path("etcd")),
        "--name=devstack",
        f"--data-dir={p.root / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=devstack={peer}",
        # A throwaway dev store: skipping fsync keeps the apiserver fast on slow disks.
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


def _argv_apiserver(p: Paths) -> list[str]:
    k = p.pki
    return [
        str(build.tool_path("kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{versions.ETCD_CLIENT_PORT}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={versions.APISERVER_PORT}",
        f"--cert-dir={p.root / 'apiserver'}",
        f"--tls-cert-file={k.serving_cert}",
        f"--tls-private-key-file={k.serving_key}",
        f"--client-ca-file={k.ca_cert}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--service-account-issuer={pki.SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={k.sa_pub}",
        f"--service-account-signing-key-file={k.sa_key}",
        f"--service-cluster-ip-range={versions.SERVICE_CLUSTER_IP_RANGE}",
        # The `kubernetes` Service's endpoints would be 127.0.0.1, which Endpoints
        # validation rejects (loopback); nothing here routes Services anyway.
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
    ]


def _secure_client_args(p: Paths, identity: str, port: int) -> list[str]:
    """Flags the controller-manager and the scheduler share: their own kubeconfig for
    everything, and a TLS health port on loopback."""
    k = p.pki
    kc = str(p.kubeconfig_for(identity))
    return [
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={k.serving_cert}",
        f"--tls-private-key-file={k.serving_key}",
        f"--client-ca-file={k.ca_cert}",
        # One instance: leader election would only delay the start by a lease period.
        "--leader-elect=false",
        "--v=1",
    ]


def _argv_controller_manager(p: Paths) -> list[str]:
    k = p.pki
    return [
        str(build.tool_path("kube-controller-manager")),
        *_secure_client_args(p, "controller-manager", versions.CONTROLLER_MANAGER_PORT),
        f"--root-ca-file={k.ca_cert}",
        f"--service-account-private-key-file={k.sa_key}",
        f"--cluster-signing-cert-file={k.ca_cert}",
        f"--cluster-signing-key-file={k.ca_key}",
        # Each controller acts as its own service account, so RBAC applies to them too.
        "--use-service-account-credentials=true",
        f"--controllers={CONTROLLERS}",
        f"--service-cluster-ip-range={versions.SERVICE_CLUSTER_IP_RANGE}",
    ]


def _argv_scheduler(p: Paths) -> list[str]:
    return [
        str(build.tool_path("kube-scheduler")),
        *_secure_client_args(p, "scheduler", versions.SCHEDULER_PORT),
    ]


def _argv_ferretdb(p: Paths) -> list[str]:
    data = p.root / "ferretdb"
    (data / "data").mkdir(parents=True, exist_ok=True)
    return [
        str(build.tool_path("ferretdb")),
        "--handler=sqlite",
        f"--sqlite-url=file:{data / 'data'}/",
        f"--state-dir={data}",
        f"--listen-addr=127.0.0.1:{versions.FERRETDB_PORT}",
        f"--debug-addr=127.0.0.1:{versions.FERRETDB_DEBUG_PORT}",
        # No network beyond loopback, and no phoning home from a dev/test server.
        "--telemetry=disable",
        "--log-level=warn",
    ]


def _argv_mongo_java(p: Paths) -> list[str]:
    data = p.root / "mongo"
    data.mkdir(parents=True, exist_ok=True)
    return [
        str(build.tool_path("mongo-java-server")),
        "127.0.0.1",
        str(versions.MONGO_PORT),
        str(data / "data.mv"),
    ]


def _argv_kubelet(p: Paths) -> list[str]:
    return [
        sys.executable,
        "-m",
        "devstack.kubelet",
        f"--kubeconfig={p.kubelet_kubeconfig}",
        f"--node-name={versions.NODE_NAME}",
        f"--state-dir={p.kubelet_state}",
        # A local cluster restarts crashed containers after 1 s doubling to 10 s, not the
        # real kubelet's 10 s to 5 min: nobody waits minutes for a fixed worker to come back.
        "--backoff-base=1",
        "--backoff-max=10",
    ]


@dataclass(frozen=True)
class Component:
    name: str
    tool: str | None  # cached binary it needs (None: the Python kubelet)
    argv: Callable[[Paths], list[str]]
    health: Callable[[Paths, float], str | None]  # (paths, started_at) -> None or reason
    port: int | None  # checked free before start, so a foreign server is reported clearly
    timeout: float  # seconds to become healthy


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component(
            "mongo-java-server",
            "mongo-java-server",
            _argv_mongo_java,
            _health_mongo_java,
            versions.MONGO_PORT,
            60,
        ),
        Component(
            "ferretdb", "ferretdb", _argv_ferretdb, _health_ferretdb, versions.FERRETDB_PORT, 30
        ),
        Component("etcd", "etcd", _argv_etcd, _health_etcd, versions.ETCD_CLIENT_PORT, 30),
        Component(
            "kube-apiserver",
            "kube-apiserver",
            _argv_apiserver,
            _health_apiserver,
            versions.APISERVER_PORT,
            120,
        ),
        Component(
            "kube-controller-manager",
            "kube-controller-manager",
            _argv_controller_manager,
            _health_secure_port(versions.CONTROLLER_MANAGER_PORT),
            versions.CONTROLLER_MANAGER_PORT,
            60,
        ),
        Component(
            "kube-scheduler",
            "kube-scheduler",
            _argv_scheduler,
            _health_secure_port(versions.SCHEDULER_PORT),
            versions.SCHEDULER_PORT,
            60,
        ),
        Component("kubelet", None, _argv_kubelet, _health_kubelet, None, 60),
    )
}

# Components started together, each wave healthy before the next (dependencies).
WAVES = (
    ("mongo-java-server", "ferretdb", "etcd"),
    ("kube-apiserver",),
    ("kube-controller-manager", "kube-scheduler", "kubelet"),
)


def resolve(only: Iterable[str] | None) -> list[str]:
    """Expand group names ("mongo", "cluster") and component names, in start order."""
    if not only:
        wanted = set(ORDER)
    else:
        wanted = set()
        for item in only:
            for part in item.split(","):
                part = part.strip()
                if part in GROUPS:
                    wanted.update(GROUPS[part])
                elif part in COMPONENTS:
                    wanted.add(part)
                elif part:
                    known = ", ".join([*GROUPS, *COMPONENTS])
                    raise StackError(f"unknown component {part!r}; known: {known}")
    return [c for c in ORDER if c in wanted]


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class Stack:
    def __init__(self, root: Path | None = None, started_by: str = "cli") -> None:
        self.paths = Paths(root or state_root())
        self.pids = process.PidDir(self.paths.run)
        self.started_by = started_by

    # -- locking: two `up`s (two terminals, two test runs) must not race -------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        self.paths.run.mkdir(parents=True, exist_ok=True)
        with (self.paths.run / "stack.lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def record(self, name: str) -> process.ProcRecord | None:
        return self.pids.live(name)

    def health(self, name: str) -> str | None:
        if name not in GROUPS["mongo"] and not self.paths.pki.ca_cert.exists():
            return "no PKI yet"
        rec = self.pids.read(name)
        return COMPONENTS[name].health(self.paths, rec.started_at if rec else 0.0)

    def _prepare_cluster_files(self) -> None:
        p = self.paths
        k = pki.ensure_pki(p.pki.root)
        pki.write_kubeconfig(k, pki.ADMIN, p.admin_kubeconfig, APISERVER_URL)
        pki.write_kubeconfig(k, pki.kubelet_identity(), p.kubelet_kubeconfig, APISERVER_URL)
        pki.write_kubeconfig(
            k, pki.CONTROLLER_MANAGER, p.kubeconfig_for("controller-manager"), APISERVER_URL
        )
        pki.write_kubeconfig(k, pki.SCHEDULER, p.kubeconfig_for("scheduler"), APISERVER_URL)

    def up(self, only: Iterable[str] | None = None) -> list[str]:
        """Start what is not running among ``only`` and wait until all of it is healthy.

        Returns the names of the components this call started.
        """
        names = resolve(only)
        if "kubelet" in names and not kubelet_available():
            _log("devstack.kubelet is not there yet: starting the cluster without a node")
            names.remove("kubelet")
        tools = [t for n in names if (t := COMPONENTS[n].tool) is not None]
        if any(n not in GROUPS["mongo"] for n in names):
            tools += ["kubectl", "helm"]  # what `env` puts on PATH to use the cluster
        build.ensure_tools(tools)
        started: list[str] = []
        t0 = time.monotonic()
        with self.locked():
            self.paths.root.mkdir(parents=True, exist_ok=True)
            if any(n not in GROUPS["mongo"] for n in names):
                self._prepare_cluster_files()
            for wave in WAVES:
                batch = [n for n in wave if n in names]
                for name in batch:
                    if self._start(name):
                        started.append(name)
                for name in batch:
                    self._wait_healthy(name)
        what = ", ".join(started) if started else "nothing (already running)"
        _log(f"up in {time.monotonic() - t0:.1f}s; started: {what}")
        return started

    def _start(self, name: str) -> bool:
        comp = COMPONENTS[name]
        if self.record(name) is not None:
            # Live but unhealthy may mean shutting down (a kubelet stopping its pods takes up
            # to ~20 s): wait for it to exit and start a new one, rather than wait on a corpse.
            deadline = time.monotonic() + 30
            while self.record(name) is not None and self.health(name) is not None:
                if time.monotonic() > deadline:
                    return False  # stuck: _wait_healthy reports why
                time.sleep(0.5)
            if self.record(name) is not None:
                return False
        if comp.port is not None and _port_in_use(comp.port):
            raise StackError(
                f"{name}: port 127.0.0.1:{comp.port} is taken by a process devstack did not "
                f"start (no live pid file under {self.paths.run}); stop it or change "
                "devstack/versions.py"
            )
        env = dict(os.environ)
        # The kubelet is this repo's Python package; make it importable whatever the cwd.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        rec = process.spawn(
            name,
            comp.argv(self.paths),
            log=self.paths.log(name),
            cwd=self.paths.root,
            env=env,
            started_by=self.started_by,
        )
        self.pids.write(rec)
        _log(f"started {name} (pid {rec.pid}); log: {self.paths.log(name)}")
        return True

    def _wait_healthy(self, name: str) -> None:
        comp = COMPONENTS[name]
        deadline = time.monotonic() + comp.timeout
        reason: str | None = "not checked"
        while time.monotonic() < deadline:
            rec = self.pids.read(name)
            if rec is None or not rec.alive():
                raise StackError(
                    f"{name} exited during start-up; last lines of {self.paths.log(name)}:\n"
                    + _tail(self.paths.log(name))
                )
            reason = self.health(name)
            if reason is None:
                return
            time.sleep(0.25)
        raise StackError(
            f"{name} not healthy after {comp.timeout:.0f}s ({reason}); last lines of "
            f"{self.paths.log(name)}:\n{_tail(self.paths.log(name))}"
        )

    def down(self, only: Iterable[str] | None = None, started_by: str | None = None) -> list[str]:
        """Stop the running components among ``only`` (all by default), in reverse order.

        With ``started_by``, stop only those that were started by that party.
        """
        stopped: list[str] = []
        with self.locked():
            for name in reversed(resolve(only)):
                rec = self.pids.read(name)
                if rec is None:
                    continue
                if started_by is not None and rec.started_by != started_by:
                    continue
                if rec.alive():
                    grace = 30.0 if name == "kubelet" else 15.0  # pods' grace periods
                    killed = process.stop(rec, grace=grace)
                    _log(f"stopped {name} (pid {rec.pid}{', SIGKILL' if killed else ''})")
                    stopped.append(name)
                self.pids.remove(name)
        return stopped

    def status(self) -> list[dict[str, str]]:
        rows = []
        for name in ORDER:
            rec = self.record(name)
            if rec is None:
                state = "stopped"
            else:
                reason = self.health(name)
                state = "healthy" if reason is None else f"unhealthy: {reason}"
            rows.append(
                {
                    "component": name,
                    "pid": str(rec.pid) if rec else "-",
                    "state": state,
                    "log": str(self.paths.log(name)),
                }
            )
        return rows

    def env_lines(self) -> list[str]:
        bins = [str(build.tool_path(t).parent) for t in ("kubectl", "helm")]
        return [
            f"export KUBECONFIG={self.paths.admin_kubeconfig}",
            f"export PUSHTASK_MONGO_URI={MONGO_URI}",
            f"export PUSHTASK_FERRETDB_URI={FERRETDB_URI}",
            f'export PATH={os.pathsep.join(bins)}{os.pathsep}"$PATH"',
        ]

    def pod_log_dir(self, namespace: str, pod: str) -> Path:
        return self.paths.kubelet_state / "pods" / namespace / pod
