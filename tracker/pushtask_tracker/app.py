"""The tracker's HTTP app: tracked links' redirects. Handlers stay thin: tokens and
targets from pushtask.tracking, clicks through pushtask.store.Store.

    GET  /c/{token}   302 to the link's target, from the run's frozen message; the click
                      is counted once per (run, user, link). HEAD and known prefetchers
                      are redirected but not counted. A forged or altered token, or a run
                      or link that does not exist: 404, nothing recorded.
    GET  /healthz     ok
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web
from pymongo.errors import PyMongoError

from pushtask.store import Store
from pushtask.tracking import CLICK_PATH, BadToken, is_prefetcher, run_targets, verify

log = logging.getLogger("pushtask.tracker")
RUNS_CACHED = 256  # runs' link targets kept in memory (a run's targets never change)


@dataclass
class Tracker:
    keys: Sequence[bytes]  # the current key first, then a previous one during a rotation
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


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(tracker: Tracker) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[TRACKER] = tracker
    # allow_head: a HEAD is redirected like a GET, and never counted.
    app.router.add_get(CLICK_PATH + "{token}", click, allow_head=True)
    app.router.add_get("/healthz", healthz)

    async def start(app: web.Application) -> None:
        if tracker.store is None and tracker.mongo_uri:
            tracker.store = Store.connect(tracker.mongo_uri, serverSelectionTimeoutMS=3000)
        if tracker.store is not None:
            await tracker.store.ensure_click_indexes()

    async def stop(app: web.Application) -> None:
        if tracker.store is not None and tracker.mongo_uri:
            await tracker.store.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app
