"""The console's HTTP API and page. Handlers stay thin: the cluster through
pushtask_client.taskapi.Cluster (synchronous: called in a thread), the ledger through
pushtask.store.Store, what to show from views.py.

    GET  /                                   the page (static/)
    GET  /api/config                         served namespaces, whether reads need a token
    GET  /api/tasks                          every task's summary
    GET  /api/stream                         the same as server-sent events, on each change
    GET  /api/tasks/{ns}/{name}              a task's page: counts, rate history, workers,
                                             Events, skip and failure samples, tracked
                                             links with their clickers
    GET  /api/tasks/{ns}/{name}/recipient    ?user=U[&run=R]: what happened to one user
    POST /api/tasks/{ns}/{name}/test         {to, attrs}: send a test (as `kubectl push test`)
    POST /api/tasks/{ns}/{name}/{action}     pause | resume | stop | restart | scale {workers}
    POST /api/manifests                      {yaml, namespace, dryRun}: create a PushTask
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from pymongo.errors import PyMongoError

from pushtask.planning import TaskRef, run_id_for
from pushtask.store import Store
from pushtask.tracking import run_targets
from pushtask_client import actions, testsend
from pushtask_client.taskapi import Cluster, ClusterError
from pushtask_console import views
from pushtask_console.auth import Auth
from pushtask_console.live import Live
from pushtask_console.security import on_prepare, security_headers

log = logging.getLogger("pushtask.console")
STATIC = Path(__file__).parent / "static"
MANAGER = "pushtask-console"
KEEPALIVE_SECONDS = 15.0


@dataclass
class Console:
    cluster: Cluster
    auth: Auth
    namespaces: list[str] = field(default_factory=list)  # empty: every namespace
    mongo_uri: str = ""  # the ledger; the store is opened on the app's own event loop
    store: Store | None = None
    poll_every: float = 1.0


CONSOLE = web.AppKey("console", Console)
LIVE = web.AppKey("live", Live)


def failure(status: int, message: str, fields: list[dict[str, str]] | None = None) -> web.Response:
    return web.json_response({"error": message, "fields": fields or []}, status=status)


def cluster_failure(error: ClusterError) -> web.Response:
    # 0: the API server is unreachable; the console is a gateway in front of it.
    return failure(error.status or 502, str(error), error.causes)


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]


def check_read(request: web.Request) -> web.Response | None:
    problem = console_of(request).auth.check_read(request.headers.get("Authorization"))
    return failure(401, problem) if problem else None


def check_write(request: web.Request) -> web.Response | None:
    problem = console_of(request).auth.check(request.headers.get("Authorization"))
    return failure(401, problem) if problem else None


def served(console: Console, ns: str) -> bool:
    return not console.namespaces or ns in console.namespaces


async def list_tasks(console: Console) -> list[dict[str, Any]]:
    """Every served task: one list per namespace (a Role per namespace allows no more)."""
    if not console.namespaces:
        return await asyncio.to_thread(console.cluster.tasks, None)
    got: list[dict[str, Any]] = []
    for ns in console.namespaces:
        got += await asyncio.to_thread(console.cluster.tasks, ns)
    return got


# -- reads ------------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def config(request: web.Request) -> web.Response:
    console = console_of(request)
    return web.json_response(
        {
            "namespaces": console.namespaces,
            "readsNeedToken": console.auth.reads_need_token,
            "tokenConfigured": console.auth.configured,
            "store": console.store is not None,
        }
    )


async def tasks(request: web.Request) -> web.Response:
    if refused := check_read(request):
        return refused
    live = request.app[LIVE]
    return web.json_response({"tasks": list(live.tasks.values()), "error": live.error})


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the task list on every change (and a comment now and then so
    proxies keep the connection)."""
    if refused := check_read(request):
        return refused
    live = request.app[LIVE]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    queue = live.subscribe()
    try:
        while True:
            try:
                payload = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            await response.write(f"event: tasks\ndata: {payload}\n\n".encode())
    except (ConnectionResetError, ConnectionError):
        pass  # the page went away
    finally:
        live.unsubscribe(queue)
    return response


async def _links(store: Store, run_id: str) -> list[dict[str, Any]]:
    """A tracked run's links: targets from its frozen spec, clickers from its counters."""
    doc, clicks = await asyncio.gather(
        store.get_run(run_id, ("spec.message",)), store.click_totals(run_id)
    )
    return views.link_rows(run_targets((doc or {}).get("spec") or {}), clicks.by_link)


async def _ledger(console: Console, run_id: str, tracked: bool = False) -> dict[str, Any]:
    """Workers and failure samples of a run from the store ('' note when it has none), and
    with `tracked` (its status counts clicks) its links and their clickers."""
    empty: dict[str, Any] = {"workers": [], "failures": [], "links": []}
    if console.store is None:
        return {**empty, "storeError": "no MongoDB URI configured"}
    store = console.store
    try:
        beats, failures, links, _ = await asyncio.gather(
            store.heartbeats(run_id),
            store.failure_samples(run_id),
            _links(store, run_id) if tracked else asyncio.sleep(0, []),  # [] at once
            store.sync_clock(max_age=10.0),
        )
    except PyMongoError as error:
        return {**empty, "storeError": f"MongoDB: {error}"}
    return {
        # Heartbeats are stamped on the store's clock: their age is judged on it too.
        "workers": views.worker_rows(beats, store.now()),
        "failures": views.failure_rows(failures),
        "links": links,
        "storeError": "",
    }


def task_ref(ns: str, name: str, task: dict[str, Any]) -> TaskRef:
    return TaskRef(ns, name, str(task["metadata"]["uid"]))


async def task_page(request: web.Request) -> web.Response:
    if refused := check_read(request):
        return refused
    console = console_of(request)
    ns, name = request.match_info["ns"], request.match_info["name"]
    if not served(console, ns):
        return failure(404, f"namespace {ns} is not served by this console")
    try:
        task, events = await asyncio.gather(
            asyncio.to_thread(console.cluster.get, ns, name),
            asyncio.to_thread(console.cluster.events, ns, name),
        )
    except ClusterError as error:
        return cluster_failure(error)
    page = views.detail(task)
    page["events"] = views.event_rows(events)
    page["history"] = request.app[LIVE].history.points(page["summary"])
    status = task.get("status") or {}
    run = status.get("run")
    if run is not None:
        run_id = run_id_for(task_ref(ns, name, task), int(run))
        page.update(await _ledger(console, run_id, tracked=status.get("clicks") is not None))
    else:
        page.update({"workers": [], "failures": [], "links": [], "storeError": ""})
    return web.json_response(page)


async def recipient(request: web.Request) -> web.Response:
    if refused := check_read(request):
        return refused
    console = console_of(request)
    ns, name = request.match_info["ns"], request.match_info["name"]
    user = request.query.get("user", "").strip()
    if not served(console, ns):
        return failure(404, f"namespace {ns} is not served by this console")
    if not user:
        return failure(400, "name a user", [{"field": "user", "message": "required"}])
    if console.store is None:
        return failure(503, "no MongoDB URI configured: the ledger cannot be read")
    try:
        task = await asyncio.to_thread(console.cluster.get, ns, name)
    except ClusterError as error:
        return cluster_failure(error)
    raw_run = request.query.get("run") or (task.get("status") or {}).get("run")
    if raw_run is None:
        return failure(409, f"pushtask/{name} has not started a run yet")
    try:
        run = int(raw_run)
    except ValueError:
        return failure(400, "run must be a number", [{"field": "run", "message": "a number"}])
    run_id = run_id_for(task_ref(ns, name, task), run)
    try:
        state, stage = await console.store.lookup(run_id, user)
    except PyMongoError as error:
        return failure(503, f"MongoDB: {error}")
    return web.json_response(views.recipient_view(state, stage, user, run))


# -- actions ----------------------------------------------------------------------------


async def act(request: web.Request) -> web.Response:
    console = console_of(request)
    ns, name = request.match_info["ns"], request.match_info["name"]
    action = request.match_info["action"]
    if refused := check_write(request):
        return refused
    if not served(console, ns):
        return failure(404, f"namespace {ns} is not served by this console")
    if action not in actions.ACTIONS:
        return failure(404, f"unknown action {action}")
    workers: int | None = None
    if action == "scale":
        with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
            body = await request.json()
            raw = body.get("workers") if isinstance(body, dict) else None
            workers = int(raw) if isinstance(raw, int | str) and str(raw).isdigit() else None
        if workers is None:
            fields = [{"field": "workers", "message": "a whole number"}]
            return failure(400, "workers must be a whole number", fields)
    try:
        said = await asyncio.to_thread(console.cluster.act, ns, name, action, workers)
    except actions.Refused as error:
        return failure(409, str(error))
    except ClusterError as error:
        return cluster_failure(error)
    log.info("%s %s/%s: %s", action, ns, name, said)
    await request.app[LIVE].poll()  # the list shows the change without waiting a tick
    return web.json_response({"message": said})


async def test_send(request: web.Request) -> web.Response:
    """ "Send a test": the same call as `kubectl push test`, its results per recipient. A
    message that does not render comes back as the form's errors do, by field."""
    console = console_of(request)
    ns, name = request.match_info["ns"], request.match_info["name"]
    if refused := check_write(request):
        return refused
    if not served(console, ns):
        return failure(404, f"namespace {ns} is not served by this console")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        return failure(400, "expected a JSON body {to, attrs}")
    try:
        users, attrs = views.parse_test_form(body.get("to"), body.get("attrs"))
        report = await asyncio.to_thread(
            testsend.send_test, console.cluster, ns, name, users, attrs
        )
    except views.FormError as error:
        return failure(400, "the test has errors", error.errors)
    except testsend.TestSendProblems as problems:
        fields = [views.split_line(line) for line in problems.lines]
        return failure(422, f"pushtask/{name}: the message does not render; nothing sent", fields)
    except ValueError as error:  # too many recipients, attributes that do not fit them
        field = "to" if str(error).startswith("--to") else "attrs"
        return failure(400, str(error), [{"field": field, "message": str(error)}])
    except ClusterError as error:
        return cluster_failure(error)
    log.info("test send %s/%s to %s: %s", ns, name, ",".join(users), report.delivered)
    return web.json_response(views.report_view(report))


async def create(request: web.Request) -> web.Response:
    """The form: YAML → local checks (field by field) → the API server's dry run → create."""
    console = console_of(request)
    if refused := check_write(request):
        return refused
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return failure(400, "expected a JSON body {yaml, namespace}")
    if not isinstance(body, dict):
        return failure(400, "expected a JSON body {yaml, namespace}")
    default_ns = str(body.get("namespace") or (console.namespaces or ["default"])[0])
    try:
        doc, ns = views.parse_manifest(str(body.get("yaml") or ""), default_ns)
    except views.FormError as error:
        return failure(422, "the manifest has errors", error.errors)
    if not served(console, ns):
        fields = [{"field": "metadata.namespace", "message": f"{ns} is not served here"}]
        return failure(422, f"namespace {ns} is not served by this console", fields)
    doc.setdefault("metadata", {})["namespace"] = ns
    name = doc["metadata"]["name"]
    try:
        await asyncio.to_thread(console.cluster.create, doc, ns, dry_run=True, manager=MANAGER)
        if body.get("dryRun"):
            return web.json_response({"message": f"pushtask/{name} is valid (dry run)"})
        await asyncio.to_thread(console.cluster.create, doc, ns, manager=MANAGER)
    except ClusterError as error:
        if error.status == 409:
            fields = [{"field": "metadata.name", "message": "already exists"}]
            return failure(409, f"pushtask/{name} already exists in {ns}", fields)
        return cluster_failure(error)
    log.info("created %s/%s", ns, name)
    await request.app[LIVE].poll()
    return web.json_response({"message": f"pushtask/{name} created", "namespace": ns,
                              "name": name}, status=201)  # fmt: skip


# -- the app ----------------------------------------------------------------------------


def make_app(console: Console) -> web.Application:
    app = web.Application(middlewares=[security_headers], client_max_size=4 * 1024 * 1024)
    app[CONSOLE] = console
    app[LIVE] = Live(lambda: list_tasks(console), console.poll_every)
    app.on_response_prepare.append(on_prepare)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    app.router.add_get("/api/config", config)
    app.router.add_get("/api/tasks", tasks)
    app.router.add_get("/api/stream", stream)
    app.router.add_post("/api/manifests", create)
    app.router.add_get("/api/tasks/{ns}/{name}", task_page)
    app.router.add_get("/api/tasks/{ns}/{name}/recipient", recipient)
    # Before {action}: the first route that matches serves.
    app.router.add_post("/api/tasks/{ns}/{name}/test", test_send)
    app.router.add_post("/api/tasks/{ns}/{name}/{action}", act)
    app.router.add_get("/healthz", healthz)

    async def start(app: web.Application) -> None:
        if console.store is None and console.mongo_uri:
            console.store = Store.connect(console.mongo_uri, serverSelectionTimeoutMS=3000)
        app[LIVE].start()

    async def stop(app: web.Application) -> None:
        await app[LIVE].stop()
        if console.store is not None:
            await console.store.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")
