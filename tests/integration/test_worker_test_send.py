"""`pushtask-worker test-send` as the test pod runs it: a real process, the real webhook
sink and a real SMTP server (aiosmtpd), and a MongoDB URI that points at a listening
socket which must never be connected to (a test send touches no store)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

import pushtask
import pushtask_worker
from pushtask import testsend
from pushtask.planning import idempotency_key
from tests.support.ownloop import OwnLoop
from tests.support.sink import SinkThread, free_port
from tests.unit.test_worker_channels import Recorder

pytestmark = pytest.mark.integration
TASK = {"namespace": "shop", "name": "promo", "uid": "8d6f7a52-2b1e-4c55-9a0e-1f2e3d4c5b6a"}


class Listener:
    """A TCP port that counts the connections made to it (a store nobody may use)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def spec(message: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "run": 3,
        "audience": {"sources": [{"kind": "inline", "users": ["x"]}]},
        "message": message,
        "delivery": {"maxAttempts": 10, "backoff": {"initialSeconds": 0.05, "maxSeconds": 600}},
        **extra,
    }


def run_pod_command(
    request: testsend.TestSend, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """What the test pod's container runs, with this checkout's packages."""
    roots = {Path(m.__file__ or "").resolve().parents[1] for m in (pushtask, pushtask_worker)}
    environ = {
        **os.environ,
        **env,
        testsend.ENV: request.encode(),
        "PYTHONPATH": os.pathsep.join([*map(str, roots), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "pushtask_worker.main", "test-send"],
        env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def store() -> Any:
    listener = Listener()
    yield listener
    listener.close()


def test_webhook_test_send_is_marked_and_writes_no_store(store: Listener) -> None:
    with SinkThread(secret="s3cret", keep_messages=True) as sink:
        # b fails twice then passes (retried as a worker retries); c is refused for good.
        sink.program({"b": [{"status": 503}, {"status": 503}, {"status": 200}],
                      "c": [{"status": 400}]})  # fmt: skip
        message = {
            "channel": "webhook",
            "webhook": {"url": sink.url, "timeoutSeconds": 5, "secretRef": {"name": "hook"}},
            "template": {"title": "Hi {{ name }}", "body": "{{ user }}: 20% off, run {{ run }}"},
        }
        request = testsend.TestSend(
            task=TASK,
            spec=spec(message),
            recipients=[
                testsend.Recipient("a", {"name": "Ann"}),
                testsend.Recipient("b", {"name": "Bo"}),
                testsend.Recipient("c", {"name": "Cy"}),
            ],
            nonce="n0nce",
        )
        proc = run_pod_command(
            request,
            {"PUSHTASK_WEBHOOK_SECRET": "s3cret", "PUSHTASK_MONGO_URI":
             f"mongodb://127.0.0.1:{store.port}/pushtask", "PUSHTASK_RUN_ID": "r"},
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr  # c failed
        found = {o.user: o for o in testsend.outcomes(proc.stdout)}
        assert found["a"] == testsend.Outcome("a", "sent", 1, 200, "")
        assert (found["b"].outcome, found["b"].attempts, found["b"].status) == ("sent", 3, 200)
        assert (found["c"].outcome, found["c"].status, found["c"].detail) == (
            "failed", 400, "HTTP 400 Bad Request"
        )  # fmt: skip
        assert [r.user for r in sink.requests] == ["a", "b", "b", "b", "c"]
        for rec in sink.requests:
            assert rec.test is True and rec.signature_ok is True
            # Never the run's key for that user, and one key for all attempts of a user.
            assert rec.key == testsend.idempotency_key("n0nce", rec.user or "")
            assert rec.key != idempotency_key(TASK["uid"], 3, rec.user or "")
        assert sink.requests[0].message == {"title": "Hi Ann", "body": "a: 20% off, run 3"}
        assert sink.requests[0].run == 3 and sink.requests[0].task == "shop/promo"
    assert store.accepted == 0, "the test send connected to the store"


def test_smtp_test_send_carries_the_header(store: Listener) -> None:
    rec = Recorder()
    port = free_port()
    ctl = Controller(rec, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        message = {
            "channel": "smtp",
            "smtp": {"host": "127.0.0.1", "port": port, "starttls": False, "from": "p@x.test"},
            "template": {"title": "Sale", "body": "Hello {{ name }}"},
        }
        request = testsend.TestSend(
            task=TASK,
            spec=spec(message),
            recipients=[testsend.Recipient("u1", {"email": "ann@x.test", "name": "Ann"})],
            nonce="n1",
        )
        proc = run_pod_command(
            request, {"PUSHTASK_MONGO_URI": f"mongodb://127.0.0.1:{store.port}/pushtask"}
        )
    finally:
        ctl.stop()
    assert proc.returncode == 0, proc.stderr
    assert testsend.outcomes(proc.stdout) == [testsend.Outcome("u1", "sent", 1, 250, "")]
    ((_, to, content),) = rec.messages
    assert to == ["ann@x.test"]
    mail = message_from_bytes(content)
    assert mail["X-PushTask-Test"] == "true"
    # (a long header is folded on the wire: unfolded here)
    key = "".join(mail["X-PushTask-Idempotency-Key"].split())
    assert key == testsend.idempotency_key("n1", "u1")
    assert "Hello Ann" in str(mail.get_payload())
    assert store.accepted == 0


def test_a_channel_that_cannot_start_fails_every_recipient_with_the_reason() -> None:
    message = {"channel": "pigeon", "settings": {}, "template": {"body": "hi"}}
    request = testsend.TestSend(TASK, spec(message), [testsend.Recipient("a")], "n2")
    proc = run_pod_command(request, {})
    assert proc.returncode == 2
    (outcome,) = testsend.outcomes(proc.stdout)
    assert outcome.outcome == "failed" and "no channel 'pigeon'" in outcome.detail
    assert json.loads(proc.stdout.splitlines()[-1])["user"] == "a"


class MiniApi(OwnLoop):
    """The few Kubernetes API paths a test send uses, served over HTTP to the real
    kubernetes client (kubectl push's own Cluster), with a kubelet's part: a created pod's
    command runs here as a process, its literal env expanded as Kubernetes expands it and
    its Secret keys resolved from `secrets`; its phase follows the process, its log is
    the process's output (text/plain, as the API server serves it)."""

    thread_name = "mini-api"

    def __init__(
        self,
        task: dict[str, Any],
        deployment: dict[str, Any] | None,
        secrets: dict[str, str],
        answer: Callable[[dict[str, Any], str], dict[str, Any]] | None = None,
    ) -> None:
        self.task, self.deployment, self.secrets = task, deployment, secrets
        # The operator's part for a task that never ran: the PodTemplate answering a
        # request (the task's annotation), built by `answer(task, nonce)`.
        self.answer = answer
        self.template: dict[str, Any] | None = None
        self.pods: dict[str, dict[str, Any]] = {}
        self.done: dict[str, subprocess.CompletedProcess[str]] = {}
        self.deleted: list[str] = []
        self.port = free_port()
        self.app = web.Application()
        r = self.app.router
        r.add_get("/apis/pushtask.dev/v1alpha1/namespaces/{ns}/pushtasks/{name}", self._task)
        r.add_patch("/apis/pushtask.dev/v1alpha1/namespaces/{ns}/pushtasks/{name}", self._patch)
        r.add_get("/apis/apps/v1/namespaces/{ns}/deployments/{name}", self._deployment)
        r.add_get("/api/v1/namespaces/{ns}/podtemplates/{name}", self._template)
        r.add_post("/api/v1/namespaces/{ns}/pods", self._create)
        r.add_get("/api/v1/namespaces/{ns}/pods/{name}", self._pod)
        r.add_get("/api/v1/namespaces/{ns}/pods/{name}/log", self._log)
        r.add_delete("/api/v1/namespaces/{ns}/pods/{name}", self._delete)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self, path: Path) -> str:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "c", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}
                    ],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [
                        {"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "shop"}}
                    ],
                    "current-context": "c",
                }
            )
        )
        return str(path)

    @staticmethod
    def _missing(kind: str, name: str) -> web.Response:
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                  "reason": "NotFound", "message": f'{kind} "{name}" not found',
                  "details": {"name": name, "kind": kind}}  # fmt: skip
        return web.json_response(status, status=404)

    async def _task(self, request: web.Request) -> web.Response:
        return web.json_response(self.task)

    async def _patch(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/merge-patch+json"
        patch = await request.json()
        annotations = self.task["metadata"].setdefault("annotations", {})
        annotations.update(patch["metadata"]["annotations"])
        nonce = annotations.get(testsend.TEMPLATE_REQUEST)
        if self.answer is not None and nonce:
            self.template = self.answer(self.task, nonce)
        return web.json_response(self.task)

    async def _template(self, request: web.Request) -> web.Response:
        if self.template is None:
            return self._missing("podtemplates", request.match_info["name"])
        return web.json_response(self.template)

    async def _deployment(self, request: web.Request) -> web.Response:
        if self.deployment is None:
            return self._missing("deployments", request.match_info["name"])
        return web.json_response(self.deployment)

    async def _create(self, request: web.Request) -> web.Response:
        pod = await request.json()
        ns, name = request.match_info["ns"], pod["metadata"]["name"]
        self.pods[name] = pod
        (container,) = pod["spec"]["containers"]
        env: dict[str, str] = {}
        for e in container["env"]:
            if "value" in e:
                # As Kubernetes does: $(NAME) of a variable defined before is expanded.
                env[e["name"]] = re.sub(
                    r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                    lambda m: env.get(m.group(1), m.group(0)),
                    e["value"],
                )
            elif ref := e["valueFrom"].get("secretKeyRef"):
                env[e["name"]] = self.secrets[f"{ref['name']}/{ref['key']}"]
            else:
                field = e["valueFrom"]["fieldRef"]["fieldPath"]
                env[e["name"]] = {"metadata.name": name, "metadata.namespace": ns}[field]
        assert container["command"] == ["pushtask-worker", "test-send"]

        async def kubelet() -> None:
            self.done[name] = await asyncio.to_thread(run_command, ["test-send"], env)

        self._kubelet = asyncio.ensure_future(kubelet())
        return web.json_response({**pod, "status": {"phase": "Pending"}}, status=201)

    async def _pod(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.pods:
            return self._missing("pods", name)
        ran = self.done.get(name)
        phase = "Running" if ran is None else "Succeeded" if ran.returncode == 0 else "Failed"
        return web.json_response({**self.pods[name], "status": {"phase": phase}})

    async def _log(self, request: web.Request) -> web.Response:
        ran = self.done[request.match_info["name"]]
        return web.Response(text=ran.stderr + ran.stdout, content_type="text/plain")

    async def _delete(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        assert request.query.get("gracePeriodSeconds") == "0"
        self.deleted.append(name)
        return web.json_response(self.pods.pop(name))


def run_command(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    roots = {Path(m.__file__ or "").resolve().parents[1] for m in (pushtask, pushtask_worker)}
    environ = {
        "PATH": os.environ.get("PATH", ""),
        **env,
        "PYTHONPATH": os.pathsep.join([*map(str, roots), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "pushtask_worker.main", *args],
        env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_plugin_sends_through_a_pod_made_like_the_workers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`kubectl push test` end to end but for the cluster: the plugin (its real API client)
    reads the task and the operator's own worker Deployment, makes the pod, which runs as
    is and reaches the sink signed with the task's Secret and marked; the plugin prints the
    table from the pod's log and deletes the pod. A task that never ran has no Deployment:
    the pod template is asked of the operator."""
    from pushtask_client.cli import main
    from pushtask_operator.deployment import build_test_pod_template, build_worker_deployment
    from tests.unit.test_operator_deployment import SETTINGS

    with SinkThread(secret="s3cret", keep_messages=True) as sink:
        sink.program({"bad": [{"status": 400}]})
        spec_doc = spec(
            {
                "channel": "webhook",
                "webhook": {"url": sink.url, "secretRef": {"name": "hook", "key": "hmac"}},
                # $(NAME) is text here: never the pod's variable of that name.
                "template": {"body": "Hi {{ name }} $(PUSHTASK_WEBHOOK_SECRET)"},
            },
            workers=2,
        )
        task = {"apiVersion": "pushtask.dev/v1alpha1", "kind": "PushTask",
                "metadata": {**TASK, "resourceVersion": "5"}, "spec": spec_doc}  # fmt: skip
        deployment = build_worker_deployment(TASK, spec_doc, "run-id", SETTINGS, replicas=0)
        with MiniApi(task, deployment, {"hook/hmac": "s3cret"}) as api:
            config = ["--kubeconfig", api.kubeconfig(tmp_path / "kubeconfig")]
            assert main(["test", "promo", "--to", "a", *config]) == 2  # no `name`: nothing made
            assert not api.pods and not sink.requests
            capsys.readouterr()
            attrs = tmp_path / "attrs.json"
            attrs.write_text(json.dumps({"name": "Ann"}))
            assert main(["test", "promo", "--to", "a,bad", "--attrs", str(attrs), *config]) == 1
            table = capsys.readouterr().out.splitlines()
            assert table[0].split() == ["USER", "RESULT", "ATTEMPTS", "STATUS", "DETAIL"]
            assert table[1].split() == ["a", "sent", "1", "200", "-"]
            assert table[2].split()[:4] == ["bad", "failed", "1", "400"]
            assert [(r.user, r.test, r.signature_ok) for r in sink.requests] == [
                ("a", True, True),
                ("bad", True, True),
            ]
            assert sink.requests[0].message == {"body": "Hi Ann $(PUSHTASK_WEBHOOK_SECRET)"}
            assert len(api.deleted) == 1 and not api.pods
            # One recipient: the pod's log is one JSON line, still read as text.
            assert main(["test", "promo", "--to", "a", "--attrs", str(attrs), *config]) == 0
            assert capsys.readouterr().out.splitlines()[1].split() == ["a", "sent", "1", "200", "-"]
            # A task that never ran: no Deployment; the plugin asks the operator (the
            # annotation), whose builder answers here, and the send goes as before.
            api.deployment = None
            api.answer = lambda task, nonce: build_test_pod_template(
                task["metadata"], task["spec"], SETTINGS, nonce
            )
            assert main(["test", "promo", "--to", "a", "--attrs", str(attrs), *config]) == 0
            assert capsys.readouterr().out.splitlines()[1].split() == ["a", "sent", "1", "200", "-"]
            asked = api.task["metadata"]["annotations"][testsend.TEMPLATE_REQUEST]
            assert api.template is not None
            assert api.template["metadata"]["annotations"] == {testsend.TEMPLATE_ANSWERS: asked}
            assert sink.requests[-1].user == "a" and sink.requests[-1].test
            assert sink.requests[-1].signature_ok  # the Secret env, as the workers get it
            assert len(api.deleted) == 3 and not api.pods
