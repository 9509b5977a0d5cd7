"""`kubectl push` as a real kubectl plugin against the real API server."""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.demo import interruptible
from devstack.testing import Kubectl
from tests.bad_specs import valid_manifest
from tests.e2e.test_operator_e2e import (
    Env,
    env,  # noqa: F401  (the operator suite's fixture: a release, a sink)
    push_task,
    users,
    wait_for,
)

pytestmark = pytest.mark.e2e
CHART = Path(__file__).resolve().parents[2] / "charts" / "pushtask"


def plugin_env(kubectl: Kubectl, extra: dict[str, str] | None = None) -> dict[str, str]:
    # The console script sits beside the interpreter of this environment.
    plugin = shutil.which("kubectl-push", path=str(Path(sys.executable).parent))
    assert plugin, "the kubectl-push console script is not installed"
    # Not the caller's PUSHTASK_MONGO_URI (a shell after `devstack env` has one): the tests
    # that mean one pass it in `extra`.
    inherited = {k: v for k, v in os.environ.items() if k != "PUSHTASK_MONGO_URI"}
    return {
        **inherited,
        "KUBECONFIG": str(kubectl.kubeconfig),
        "PATH": f"{Path(plugin).parent}{os.pathsep}{os.environ['PATH']}",
        **(extra or {}),
    }


def kubectl_push(
    kubectl: Kubectl, *args: str, extra: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`kubectl push ...`: kubectl finds the `kubectl-push` console script on PATH."""
    return subprocess.run(
        [str(kubectl.binary), "push", *args],
        env=plugin_env(kubectl, extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kubectl_push_async(kubectl: Kubectl, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(kubectl.binary), "push", *args],
        env=plugin_env(kubectl),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class OnTerminal:
    """`kubectl push ...` with a pseudo-terminal as its output, read on a thread (what a
    person at a terminal sees: the live bar, not the plain lines for pipes)."""

    def __init__(self, kubectl: Kubectl, *args: str) -> None:
        leader, follower = pty.openpty()
        environ = plugin_env(kubectl, {"COLUMNS": "160", "TERM": "xterm"})
        self.proc = subprocess.Popen(
            [str(kubectl.binary), "push", *args], env=environ, stdout=follower, stderr=follower
        )
        os.close(follower)
        self._leader = leader
        self.output = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._leader, 4096)
            except OSError:  # EIO: the other side closed
                return
            if not chunk:
                return
            self.output += chunk

    def wait(self, timeout: float) -> str:
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        os.close(self._leader)
        return self.output.decode(errors="replace")


def spec_of(k: Kubectl, name: str) -> Any:
    return k.json("get", "pushtask", name)["spec"]


def test_lifecycle_commands_patch_the_spec(
    pushtask_crd: None, kubectl: Kubectl, namespace: str
) -> None:
    k = kubectl.in_namespace(namespace)
    k.apply(json.dumps(valid_manifest("cli")))

    for action, state, said in [
        ("pause", "Paused", "pushtask/cli: spec.state Started -> Paused"),
        ("pause", "Paused", "pushtask/cli unchanged"),
        ("resume", "Started", "pushtask/cli: spec.state Paused -> Started"),
        ("stop", "Stopped", "pushtask/cli: spec.state Started -> Stopped"),
    ]:
        # kubectl's flags go before or after the command and its arguments.
        proc = kubectl_push(k, action, "cli", "-n", namespace)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == said
        assert spec_of(k, "cli")["state"] == state

    proc = kubectl_push(k, "-n", namespace, "restart", "cli")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "pushtask/cli: spec.run 1 -> 2 (a new run)"
    assert (spec_of(k, "cli")["run"], spec_of(k, "cli")["state"]) == (2, "Started")

    proc = kubectl_push(k, "scale", "--namespace", namespace, "cli", "7")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("-> 7") and "spec.workers" in proc.stdout
    assert spec_of(k, "cli")["workers"] == 7
    # The API server's own bounds (the CRD's maximum) come back as one line.
    proc = kubectl_push(k, "-n", namespace, "scale", "cli", "100000")
    assert proc.returncode == 1 and proc.stderr.startswith("error: the API server refused it")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_restart_from_two_terminals_makes_two_runs(
    pushtask_crd: None, kubectl: Kubectl, namespace: str
) -> None:
    """The patch carries the resourceVersion it was planned from: two restarts at once
    both land (one is refused with 409, reads the task again and raises it once more)."""
    k = kubectl.in_namespace(namespace)
    k.apply(json.dumps(valid_manifest("twice")))
    procs = [kubectl_push_async(k, "-n", namespace, "restart", "twice") for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert spec_of(k, "twice")["run"] == 3


def test_a_refused_transition_says_why(
    pushtask_crd: None, kubectl: Kubectl, namespace: str
) -> None:
    k = kubectl.in_namespace(namespace)
    k.apply(json.dumps(valid_manifest("over")))
    status = {"status": {"phase": "Finished", "run": 1}}
    k("patch", "pushtask", "over", "--subresource=status", "--type=merge", "-p", json.dumps(status))
    proc = kubectl_push(k, "-n", namespace, "resume", "over")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: over is Finished: resume continues a paused run; restart starts a new one"
    )
    assert spec_of(k, "over").get("state", "Started") == "Started"


def test_list_all_namespaces_and_json(pushtask_crd: None, kubectl: Kubectl, namespace: str) -> None:
    other = f"{namespace[:50]}-b"
    kubectl("create", "namespace", other)
    try:
        kubectl.in_namespace(namespace).apply(json.dumps(valid_manifest("first")))
        kubectl.in_namespace(other).apply(json.dumps(valid_manifest("second")))
        for args in (["list", "-A"], ["-A", "list"]):
            proc = kubectl_push(kubectl, *args)
            assert proc.returncode == 0, proc.stderr
            lines = proc.stdout.splitlines()
            assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
            rows = {tuple(line.split()[:2]) for line in lines[1:]}
            assert {(namespace, "first"), (other, "second")} <= rows
        for args in (["-n", other, "get", "-o", "json"], ["get", "-o", "json", "-n", other]):
            proc = kubectl_push(kubectl, *args)
            assert [t["name"] for t in json.loads(proc.stdout)] == ["second"], proc.stderr
        proc = kubectl_push(kubectl, "get", "-n", other, "-o", "yaml")
        assert [t["name"] for t in yaml.safe_load(proc.stdout)] == ["second"], proc.stderr
        # A flag the command does not take is a usage error, as kubectl's are.
        proc = kubectl_push(kubectl, "pause", "first", "-n", namespace, "-A")
        assert proc.returncode == 2 and "-A/--all-namespaces: pause works on one" in proc.stderr
    finally:
        kubectl("delete", "namespace", other, "--wait=false", check=False)


class Lines:
    """A process's stdout read line by line on a thread, to wait for what it prints."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def until(self, wanted: Callable[[list[str]], bool], timeout: float = 30) -> list[str]:
        """Lines until one of them makes `wanted(its words)` true; that line last."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"not printed in {timeout}s; printed: {seen}") from None
            seen.append(line)
            if wanted(line.split()):
                return seen


def test_list_watch_prints_each_change_until_interrupted(
    pushtask_crd: None, kubectl: Kubectl, namespace: str
) -> None:
    """`list -w` is a real watch: the list, then a line for each change, like `kubectl
    get -w`, and Ctrl-C ends it without a traceback."""
    k = kubectl.in_namespace(namespace)
    k.apply(json.dumps(valid_manifest("first")))
    proc = subprocess.Popen(
        [str(kubectl.binary), "push", "list", "-w", "-n", namespace],
        env=plugin_env(k),
        preexec_fn=interruptible,  # the Ctrl-C below reaches it even from a background job
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = Lines(proc)
    try:
        head = out.until(lambda w: w[:1] == ["NAME"])
        assert head[-1].split()[:3] == ["NAME", "PHASE", "RUN"]
        out.until(lambda w: w[:1] == ["first"])
        k.apply(json.dumps(valid_manifest("second")))
        out.until(lambda w: w[:1] == ["second"])
        status = {"status": {"phase": "Started", "run": 1, "counts": {"audience": 90, "sent": 40}}}
        patch = ["--subresource=status", "--type=merge", "-p", json.dumps(status)]
        k("patch", "pushtask", "first", *patch)
        seen = out.until(lambda w: w[:2] == ["first", "Started"])
        assert seen[-1].split()[:6] == ["first", "Started", "1", "40", "0", "90"], seen
        k("delete", "pushtask", "second")
        out.until(lambda w: w[:2] == ["second", "Deleted"])
        assert proc.poll() is None, "the watch ended by itself"
    finally:
        proc.send_signal(signal.SIGINT)  # kubectl execs the plugin: this pid is the plugin
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err == "", err


def test_an_unknown_task_is_a_clear_error(
    pushtask_crd: None, kubectl: Kubectl, namespace: str
) -> None:
    for args in (["pause", "nope"], ["status", "nope"], ["events", "nope"]):
        proc = kubectl_push(kubectl, "-n", namespace, *args)
        assert proc.returncode == 1
        assert proc.stderr.strip() == f'error: pushtask "nope" not found in namespace {namespace}'


def viewer_kubeconfig(kubectl: Kubectl, namespace: str, tmp_path: Path) -> Path:
    """A kubeconfig of a ServiceAccount that may read PushTasks and nothing more."""
    k = kubectl.in_namespace(namespace)
    k("create", "serviceaccount", "viewer")
    k("create", "role", "viewer", "--verb=get,list,watch", "--resource=pushtasks.pushtask.dev")
    k("create", "rolebinding", "viewer", "--role=viewer", f"--serviceaccount={namespace}:viewer")
    return token_kubeconfig(kubectl, namespace, "viewer", tmp_path)


def token_kubeconfig(kubectl: Kubectl, namespace: str, account: str, tmp_path: Path) -> Path:
    """A kubeconfig that acts as the ServiceAccount `account` of `namespace`."""
    k = kubectl.in_namespace(namespace)
    token = k("create", "token", account, "--duration=10m").stdout.strip()
    admin = yaml.safe_load(kubectl.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {
                "name": account,
                "context": {"cluster": cluster["name"], "user": account, "namespace": namespace},
            },
        ],
        "current-context": account,
    }
    path = tmp_path / f"{account}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def test_no_permission_names_the_verb_and_the_resource(
    pushtask_crd: None, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl.in_namespace(namespace).apply(json.dumps(valid_manifest("guarded")))
    viewer = viewer_kubeconfig(kubectl, namespace, tmp_path)
    # --kubeconfig, and the context's namespace as the default (no -n).
    proc = kubectl_push(kubectl, "--kubeconfig", str(viewer), "list")
    assert proc.returncode == 0 and "guarded" in proc.stdout, proc.stderr
    proc = kubectl_push(kubectl, "--kubeconfig", str(viewer), "pause", "guarded")
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        f'error: forbidden: you may not patch pushtasks.pushtask.dev "guarded" in namespace '
        f"{namespace}"
    ), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # KUBECONFIG works as for kubectl.
    proc = kubectl_push(kubectl, "list", extra={"KUBECONFIG": str(viewer)})
    assert proc.returncode == 0 and "guarded" in proc.stdout, proc.stderr


def test_validate_asks_the_api_server_too(
    pushtask_crd: None, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(valid_manifest("checked")))
    proc = kubectl_push(kubectl, "-n", namespace, "validate", str(good))
    assert proc.returncode == 0, proc.stderr
    assert "valid locally and by the API server (dry run)" in proc.stdout
    assert kubectl.in_namespace(namespace)("get", "pushtask", "checked", check=False).returncode
    # Fine for the models, refused by the API server: an object name it does not allow.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(valid_manifest("Not_A_Name")))
    proc = kubectl_push(kubectl, "-n", namespace, "validate", str(bad))
    assert proc.returncode == 1
    assert "Not_A_Name" in proc.stderr and "the API server refused it" in proc.stderr


def test_completion_is_what_kubectl_asks_for(
    pushtask_crd: None, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.in_namespace(namespace).apply(json.dumps(valid_manifest("completed")))
    script = shutil.which("kubectl_complete-push", path=str(Path(sys.executable).parent))
    assert script
    environ = {**os.environ, "KUBECONFIG": str(kubectl.kubeconfig)}
    for words in (
        ["-n", namespace, "pause", "comp"],
        ["pause", f"--namespace={namespace}", "comp"],
    ):
        proc = subprocess.run([script, *words], env=environ, capture_output=True, text=True)
        assert proc.stdout.splitlines() == ["completed", ":4"], words


def test_degrade_knows_the_tiers_the_operator_is_configured_with(
    pushtask_crd: None, kubectl: Kubectl, helm: Any, namespace: str, tmp_path: Path
) -> None:
    """The tiers come from the release's operator (the chart's `tiers`, its PUSHTASK_TIERS):
    completion offers them and `degrade` refuses another; a person with only the chart's
    degrade-editor Role gets the tiers its ConfigMap names."""
    k = kubectl.in_namespace(namespace)
    tiers = {"bronze": [0, 499], "gold": [500, 1000], "low": None, "normal": None, "critical": None}
    rendered = helm(
        "template", "tiered", str(CHART), "--namespace", namespace,
        "--set", "mongodb.uri=mongodb://mongo.invalid:27017/db",
        "--set-json", f"tiers={json.dumps(tiers)}",
    ).stdout  # fmt: skip
    kept = {
        ("Deployment", "tiered-pushtask-operator"),
        ("ConfigMap", "tiered-pushtask-degrade"),
        ("Role", "tiered-pushtask-degrade-editor"),
    }
    docs = [
        d for d in yaml.safe_load_all(rendered) if d and (d["kind"], d["metadata"]["name"]) in kept
    ]
    assert len(docs) == len(kept), rendered[:2000]
    for doc in docs:
        if doc["kind"] == "Deployment":
            doc["spec"]["replicas"] = 0  # only its settings are read: no operator has to run
    k.apply(yaml.safe_dump_all(docs))
    where = ["--release-namespace", namespace, "--configmap", "tiered-pushtask-degrade"]
    script = shutil.which("kubectl_complete-push", path=str(Path(sys.executable).parent))
    assert script

    def complete(*words: str, config: Path = kubectl.kubeconfig) -> list[str]:
        environ = {**os.environ, "KUBECONFIG": str(config)}
        proc = subprocess.run([script, *words], env=environ, capture_output=True, text=True)
        return proc.stdout.splitlines()

    assert complete("degrade", *where, "") == ["bronze", "gold", ":4"]
    assert complete("undegrade", *where, "g") == ["gold", ":4"]
    proc = kubectl_push(k, "degrade", "low", *where)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: unknown tier 'low': the operator (deployment {namespace}/tiered-pushtask-operator)"
        " has tiers bronze, gold"
    )
    proc = kubectl_push(k, "degrade", *where, "gold", "--mode", "immediate")
    assert proc.returncode == 0, proc.stderr
    assert k.json("get", "configmap", "tiered-pushtask-degrade")["data"] == {"gold": "immediate"}

    # On call: the chart's degrade-editor Role only (it cannot read the operator's Deployment).
    k("create", "serviceaccount", "oncall")
    k("create", "rolebinding", "oncall", "--role=tiered-pushtask-degrade-editor",
      f"--serviceaccount={namespace}:oncall")  # fmt: skip
    oncall = token_kubeconfig(kubectl, namespace, "oncall", tmp_path)
    assert complete("degrade", *where, "", config=oncall) == ["gold", ":4"]
    proc = kubectl_push(k, "undegrade", "gold", *where, extra={"KUBECONFIG": str(oncall)})
    assert proc.returncode == 0, proc.stderr
    assert k.json("get", "configmap", "tiered-pushtask-degrade")["data"] == {"gold": "off"}


# -- with an operator: a run to watch, a user to look up --------------------------------


def test_a_run_seen_through_the_plugin(env: Env) -> None:  # noqa: F811
    """status follows the run to its end, recipient answers per user, events lists the
    task's Events, degrade/undegrade write the release's degrade ConfigMap."""
    k, ns = env.kubectl, env.namespace
    server, _, database = env.mongo_uri.partition("?")[0].rpartition("/")
    server += "/"  # the URI without its database, as `devstack env` exports it
    audience = users(600, "c")
    env.apply(push_task("watched", env.sink.url, audience, workers=2, rate=150))
    started = time.monotonic()
    terminal = OnTerminal(k, "-n", ns, "status", "watched")
    proc = kubectl_push(k, "-n", ns, "status", "watched", timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started > 2, "status returned before the run ended"
    lines = proc.stdout.splitlines()
    assert len(lines) >= 2, "one line only: the run was not followed"
    assert "[" + "#" * 30 + "] 100%  600/600" in lines[-1] and "Finished" in lines[-1]
    proc = kubectl_push(k, "-n", ns, "status", "watched", "--once", "-o", "json")
    shown = json.loads(proc.stdout)
    assert (shown["phase"], shown["sent"], shown["total"]) == ("Finished", 600, 600)
    # On a terminal: rich's bar, redrawn in place as the run moves, ending full.
    seen = terminal.wait(timeout=60)
    assert terminal.proc.returncode == 0, seen
    redraws = [int(p) for p in re.findall(r"(\d+)%", seen)]
    assert redraws[-1] == 100 and "600/600" in seen and "Finished" in seen, seen[-400:]
    assert any(0 < p < 100 for p in redraws), f"the bar never showed a run in progress: {seen!r}"

    proc = kubectl_push(k, "-n", ns, "recipient", "watched", "c-00042")
    assert proc.returncode == 0, proc.stderr
    fields = dict(line.split(":", 1) for line in proc.stdout.splitlines())
    assert fields["status"].strip() == "sent" and fields["attempts"].strip() == "1"
    assert fields["worker"].strip().startswith("watched-worker-")
    # The Secret the worker Deployment names decides the database.
    containers = k.json("get", "deployment", "watched-worker")["spec"]["template"]["spec"]
    ref = next(
        e["valueFrom"]["secretKeyRef"]
        for e in containers["containers"][0]["env"]
        if e["name"] == "PUSHTASK_MONGO_URI"
    )
    secret = f'secret "{ref["name"]}" key "{ref["key"]}"'
    assert fields["database"].strip() == f"{database} ({secret})"
    proc = kubectl_push(k, "-n", ns, "recipient", "watched", "stranger", "--run", "1")
    assert proc.stdout.strip() == "stranger: not in the audience of run 1", proc.stderr

    # The bug report: `devstack env`'s PUSHTASK_MONGO_URI names no database, and the plugin
    # read `pushtask`, answering that the run was pruned. Now a URI must name its database.
    proc = kubectl_push(
        k, "recipient", "watched", "c-00042", "-n", ns, extra={"PUSHTASK_MONGO_URI": server}
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == (
        f"error: PUSHTASK_MONGO_URI {server} names no database, so it would be read in "
        f"'pushtask' whatever the task uses; pushtask/watched's workers use database "
        f"'{database}' ({secret}): say {server}{database}, or "
        "unset PUSHTASK_MONGO_URI to read through the workers' Secret"
    )
    proc = kubectl_push(
        k, "recipient", "watched", "c-00042", "-n", ns,
        extra={"PUSHTASK_MONGO_URI": f"{server}{database}"},
    )  # fmt: skip
    assert proc.returncode == 0 and "status:    sent" in proc.stdout, proc.stderr
    # Another database: said so, and the run is absent there (not "pruned").
    proc = kubectl_push(
        k, "recipient", "watched", "c-00042", "-n", ns, "--mongo-uri", f"{server}elsewhere"
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"note: reading database 'elsewhere' (--mongo-uri); pushtask/watched's workers use "
        f"'{database}'",
        "error: run 1 of pushtask/watched, its current run, is not in database 'elsewhere' "
        "(--mongo-uri): is it the database the task's workers use? Without --mongo-uri, the "
        "plugin reads through their Secret",
    ]
    # Retention (the chart keeps 3 runs): three new runs prune run 1's ledger.
    for run in (2, 3, 4):
        proc = kubectl_push(k, "restart", "watched", "-n", ns)
        assert proc.returncode == 0, proc.stderr

        def reached(run: int = run) -> bool:
            return env.status("watched").get("run") == run

        wait_for(f"run {run}", reached, 60)
    kubectl_push(k, "stop", "watched", "-n", ns)
    proc = kubectl_push(k, "recipient", "watched", "c-00042", "--run", "1", "-n", ns)
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        f"error: run 1 of pushtask/watched is no longer in database '{database}' ({secret}): "
        "pruned by retention"
    ), proc.stderr
    proc = kubectl_push(k, "recipient", "watched", "c-00042", "--run", "9", "-n", ns)
    assert proc.stderr.strip() == "error: pushtask/watched has no run 9: its current run is 4"

    proc = kubectl_push(k, "-n", ns, "events", "watched")
    assert proc.returncode == 0, proc.stderr
    assert "StartTimeReached" in proc.stdout and "RunFinished" in proc.stdout

    release_ns = ["--release-namespace", ns, "--configmap", f"{env.release}-pushtask-degrade"]
    proc = kubectl_push(k, "degrade", "low", "--mode", "immediate", *release_ns)
    assert proc.returncode == 0, proc.stderr
    data = k.json("get", "configmap", f"{env.release}-pushtask-degrade").get("data")
    assert data == {"low": "immediate"}
    proc = kubectl_push(k, "undegrade", "low", *release_ns)
    assert proc.stdout.strip().startswith("tier low lifted")
    assert k.json("get", "configmap", f"{env.release}-pushtask-degrade")["data"] == {"low": "off"}


# -- a test send: through a pod like the task's workers, outside the run -------------------


def test_a_task_that_never_ran_is_tested_from_the_operators_pod_template(
    env: Env,  # noqa: F811
) -> None:
    """A task waiting for a startAt a day ahead has no worker Deployment: `kubectl push
    test` asks the real operator, which answers with the pod template the first run's
    workers would get (a PodTemplate owned by the task); the marked send reaches the sink
    from a pod made of it. The task is as it was: Ready, no run, no Deployment. A second
    test asks again (a new nonce) and is answered again."""
    from datetime import UTC, datetime, timedelta

    from pushtask import testsend

    k, ns = env.kubectl, env.namespace
    start = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    env.apply(push_task("later", env.sink.url, users(5, "l"), workers=1,
                        schedule={"startAt": start}))  # fmt: skip
    before = env.wait_phase("later", "Ready")
    assert env.deployment("later") is None
    seen = len(env.sink.requests)

    for round_ in (1, 2):
        proc = kubectl_push(k, "-n", ns, "test", "later", "--to", f"t{round_}", timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = [line.split() for line in proc.stdout.splitlines()]
        assert rows[1][:4] == [f"t{round_}", "sent", "1", "200"], rows
        template = k.json("get", "podtemplate", "later-worker")
        asked = env.task("later")["metadata"]["annotations"][testsend.TEMPLATE_REQUEST]
        assert template["metadata"]["annotations"][testsend.TEMPLATE_ANSWERS] == asked
    (owner,) = template["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("PushTask", env.task("later")["metadata"]["uid"])
    (container,) = template["template"]["spec"]["containers"]
    assert container["image"], container

    env.quiet_sink()
    new = env.sink.requests[seen:]
    assert [(r.user, r.test, r.task) for r in new] == [
        ("t1", True, f"{ns}/later"),
        ("t2", True, f"{ns}/later"),
    ]
    # The task is untouched: still Ready for its startAt, no run, no Deployment.
    after = env.status("later")
    assert (after["phase"], after.get("run"), after.get("runId")) == (
        "Ready", before.get("run"), before.get("runId")
    )  # fmt: skip
    assert not after.get("runId") and env.deployment("later") is None
    wait_for(
        "the test pods deleted",
        lambda: not k.json("get", "pods", "-l", f"{testsend.LABEL}=true")["items"],
        30,
    )


def test_a_test_send_is_marked_and_stays_out_of_the_run(
    env: Env,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`kubectl push test` on a task that ran: the sink gets one marked send per recipient
    (the test pod is made from the worker Deployment, so it reaches the sink as they do),
    the task's counters and its run's ledger are as they were, the pod is gone; a message
    that does not render with the attributes is refused before any pod, exit 2."""
    from pushtask import testsend
    from pushtask.planning import idempotency_key

    k, ns = env.kubectl, env.namespace
    audience = users(20, "t")
    env.apply(push_task("tried", env.sink.url, audience, workers=1, rate=200))
    before = env.wait_phase("tried", "Finished")
    env.quiet_sink()
    seen = len(env.sink.requests)
    uid = env.task("tried")["metadata"]["uid"]

    attrs = tmp_path / "attrs.yaml"
    attrs.write_text("- {id: a, name: Ann}\n- {id: b, name: Bo}\n")
    proc = kubectl_push(k, "-n", ns, "test", "tried", "--to", "a,b", "--attrs", str(attrs),
                        timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert rows[0] == ["USER", "RESULT", "ATTEMPTS", "STATUS", "DETAIL"]
    assert sorted(r[:4] for r in rows[1:]) == [["a", "sent", "1", "200"], ["b", "sent", "1", "200"]]
    env.quiet_sink()
    new = env.sink.requests[seen:]
    assert sorted(r.user or "" for r in new) == ["a", "b"], new
    for r in new:
        assert r.test, f"not marked as a test: {r}"
        assert r.task == f"{ns}/tried" and 200 <= r.status < 300
        assert r.key != idempotency_key(uid, 1, r.user or "")
    assert all(not r.test for r in env.sink.requests[:seen])

    # Outside the run: its counters (the operator writes them every second) and its ledger.
    time.sleep(3)
    after = env.status("tried")
    assert (after["phase"], after["run"], after["counts"]) == (
        "Finished", before["run"], before["counts"]
    )  # fmt: skip
    assert after["counts"]["sent"] == 20
    proc = kubectl_push(k, "-n", ns, "recipient", "tried", "a")
    assert proc.stdout.strip() == "a: not in the audience of run 1", proc.stderr

    # The pod was deleted.
    def no_test_pods() -> bool:
        return not k.json("get", "pods", "-l", f"{testsend.LABEL}=true")["items"]

    wait_for("the test pod deleted", no_test_pods, 30)

    # A message that does not render for a recipient: nothing made, nothing sent.
    env.patch_spec(
        "tried", message={"template": {"title": "Sale", "body": "Hi {{ name }}, code {{ code }}"}}
    )
    seen = len(env.sink.requests)
    proc = kubectl_push(k, "-n", ns, "test", "tried", "--to", "c,a", "--attrs", str(attrs))
    assert proc.returncode == 1 and proc.stdout == ""  # --attrs names b, not in --to
    assert proc.stderr.strip() == "error: attrs names users not in --to: b"
    proc = kubectl_push(k, "-n", ns, "test", "tried", "--to", "c,a")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"pushtask/tried: spec.message.template field 'body', line 1: 'name' is undefined "
        f"(user {user})"
        for user in ("c", "a")
    ]
    assert len(env.sink.requests) == seen
    assert not k.json("get", "pods", "-l", f"{testsend.LABEL}=true")["items"]
