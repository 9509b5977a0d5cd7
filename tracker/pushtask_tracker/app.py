"""The tracker's HTTP app: tracked links' redirects. Handlers stay thin: tokens and
targets from pushtask.tracking, clicks through pushtask.store.Store.

    GET  /c/{token}   302 to the link's target, from the run's frozen message; the click
                      is counted once per (run, user, link). HEAD and known prefetchers
                      are redirected but not counted. A forged or altered token, or a run
                      or link that does not exist: 404, nothing recorded.
    POST /v1/conversions
                      {"event", "token"} or {"event", "task": "ns/name", "run", "user"}:
                      the recipient's conversion, counted once per (run, event, user), if
                      it comes within the run's conversionWindow of their send. Needs the
                      bearer token (401 without it; every request refused when the tracker
                      has none). 201 recorded, 200 already recorded, 400 a bad body, 404
                      an unknown token, run or recipient, 422 outside the window.
    GET  /healthz     ok
"""

from __future__ import annotations

import hmac
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web
from pymongo.errors import PyMongoError

from pushtask.store import Store
from pushtask.tracking import (
    CLICK_PATH,
    DEFAULT_WINDOW,
    BadToken,
    conversion_window,
    is_prefetcher,
    parse_conversion,
    run_targets,
    verify,
)

log = logging.getLogger("pushtask.tracker")
RUNS_CACHED = 256  # runs' link targets kept in memory (a run's targets never change)
CLOCK_READ_SECONDS = 30.0  # conversion windows are judged on the store's clock


@dataclass
class Tracker:
    keys: Sequence[bytes]  # the current key first, then a previous one during a rotation
    # The bearer token of POST /v1/conversions (a Secret); empty: conversions are refused.
    conversions_token: str = ""
    mongo_uri: str = ""  # the store is opened on the app's own event loop
    store: Store | None = None
    # run id -> link targets: frozen with the run, so cached without expiry (bounded).
    targets: OrderedDict[str, tuple[str, ...]] = field(default_factory=OrderedDict)

    async def targets_of(self, run_id: str) -> tuple[str, ...] | None:
        """The run's link targets; None when the run is not stored (or tracks no links)."""
        cached = self.targets.get(run_id)
        if cached is not None:
            self.targets.move_to_end(run_id)
            return cached
        assert self.store is not None
        doc = await self.store.get_run(run_id, ("spec.message",))
        message = ((doc or {}).get("spec") or {}).get("message") or {}
        if not (message.get("tracking") or {}).get("links"):
            return None  # a run unknown, or one that never sent tracked links
        found = run_targets({"message": message})
        self.targets[run_id] = found
        if len(self.targets) > RUNS_CACHED:
            self.targets.popitem(last=False)
        return found


TRACKER = web.AppKey("tracker", Tracker)
NOT_FOUND = "not found"


async def click(request: web.Request) -> web.StreamResponse:
    tracker = request.app[TRACKER]
    try:
        found = verify(tracker.keys, request.match_info["token"])
    except BadToken:
        raise web.HTTPNotFound(text=NOT_FOUND) from None
    try:
        targets = await tracker.targets_of(found.run_id)
    except PyMongoError as error:
        log.warning("store unavailable: %s", error)
        raise web.HTTPServiceUnavailable(text="try again shortly") from None
    if targets is None or found.link >= len(targets):
        raise web.HTTPNotFound(text=NOT_FOUND)
    counted = request.method == "GET" and not is_prefetcher(request.headers.get("User-Agent"))
    if counted and tracker.store is not None:
        try:
            await tracker.store.record_click(found.run_id, found.user, found.link)
        except PyMongoError as error:
            # The person still gets where the link goes; the click is lost, not the visit.
            log.warning("click not recorded (store unavailable): %s", error)
    # No caching: a browser that cached the redirect would never count a later click,
    # and every click is a (cheap) request here.
    raise web.HTTPFound(targets[found.link], headers={"Cache-Control": "no-store"})


def _refusal(tracker: Tracker, header: str | None) -> str | None:
    """Why a conversion request is not authorised (None: it is). Constant-time compare."""
    expected = tracker.conversions_token.strip().encode()
    if not expected:
        return "this tracker has no conversions token configured: conversions are disabled"
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        return "a valid bearer token is required"
    return None


def _answer(status: int, **fields: object) -> web.Response:
    return web.json_response(fields, status=status)


async def conversion(request: web.Request) -> web.Response:
    tracker = request.app[TRACKER]
    if (problem := _refusal(tracker, request.headers.get("Authorization"))) is not None:
        return _answer(401, error=problem)
    store = tracker.store
    assert store is not None
    try:
        asked = parse_conversion(await request.json())
    except ValueError as error:  # JSON that does not parse is a ValueError too
        return _answer(400, error=str(error))
    try:
        if asked.token is not None:
            try:
                click = verify(tracker.keys, asked.token)
            except BadToken:
                return _answer(404, error="unknown token")
            run_id: str | None = click.run_id
            user = click.user
        else:
            assert asked.namespace and asked.name and asked.run and asked.user
            run_id = await store.find_run(asked.namespace, asked.name, asked.run)
            user = asked.user
        doc = await store.get_run(run_id, ("spec.message",)) if run_id else None
        message = ((doc or {}).get("spec") or {}).get("message") or {}
        if run_id is None or not message.get("tracking"):
            return _answer(404, error="no such run, or it does not track conversions")
        state = await store.recipient(run_id, user)
        if state is None or state.status != "sent" or state.at is None:
            return _answer(404, error="this user was not sent this run's message")
        await store.sync_clock(max_age=CLOCK_READ_SECONDS)
        if store.now() - state.at > conversion_window({"message": message}):
            shown = message["tracking"].get("conversionWindow") or DEFAULT_WINDOW
            return _answer(422, error=f"outside the conversion window ({shown} after the send)")
        recorded = await store.record_conversion(run_id, user, asked.event)
    except PyMongoError as error:
        log.warning("store unavailable: %s", error)
        return _answer(503, error="try again shortly")
    return _answer(201 if recorded else 200, recorded=recorded, run=run_id, user=user,
                   event=asked.event)  # fmt: skip


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(tracker: Tracker) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[TRACKER] = tracker
    # allow_head: a HEAD is redirected like a GET, and never counted.
    app.router.add_get(CLICK_PATH + "{token}", click, allow_head=True)
    app.router.add_post("/v1/conversions", conversion)
    app.router.add_get("/healthz", healthz)

    async def start(app: web.Application) -> None:
        if tracker.store is None and tracker.mongo_uri:
            tracker.store = Store.connect(tracker.mongo_uri, serverSelectionTimeoutMS=3000)
        if tracker.store is not None:
            await tracker.store.ensure_click_indexes()
            await tracker.store.sync_clock()

    async def stop(app: web.Application) -> None:
        if tracker.store is not None and tracker.mongo_uri:
            await tracker.store.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app
