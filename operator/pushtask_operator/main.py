"""`pushtask-operator`: registers the handlers, configures kopf, runs it. Nothing else.

pushtask-operator [--all-namespaces | --namespace NS ...] [--peering NAME | --standalone]
                  [--liveness URL]
pushtask-operator selftest      # helm test: MongoDB from PUSHTASK_MONGO_URI answers
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import kopf
from pymongo.errors import PyMongoError

from pushtask import testsend
from pushtask.models import GROUP, PLURAL, VERSION
from pushtask.store import Store
from pushtask_operator import handlers, metrics
from pushtask_operator.degrade import DegradeView, DegradeWatch
from pushtask_operator.kube import Kube
from pushtask_operator.notifier import Notifier
from pushtask_operator.settings import OperatorSettings, SettingsError, from_env

log = logging.getLogger("pushtask.operator")


def configure_kopf(
    kopf_settings: kopf.OperatorSettings, config: OperatorSettings, *, peering: bool = True
) -> None:
    """kopf's settings, each chosen on purpose (the defaults suit a demo, not a cluster)."""
    # The API server ends a watch after server_timeout; a client timeout a little longer
    # catches a connection that died silently (a load balancer dropping idle streams).
    kopf_settings.watching.server_timeout = 270
    kopf_settings.watching.client_timeout = 300
    kopf_settings.watching.connect_timeout = 30
    kopf_settings.watching.reconnect_backoff = 1.0
    kopf_settings.networking.request_timeout = 60
    # API errors in kopf's own calls (patches, events): back off, then give up quietly.
    kopf_settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    # Only kopf's warnings become Events; our transitions are posted explicitly, one each.
    kopf_settings.posting.level = logging.WARNING
    # `kubectl describe` shows who said it: this operator's pod, not "kopf/dev".
    kopf_settings.posting.reporting_component = "pushtask-operator"
    kopf_settings.posting.reporting_instance = os.environ.get("POD_NAME", "local")
    kopf_settings.posting.event_name_prefix = "pushtask-"
    # The operator is the only writer of status, and status has a fixed schema: kopf keeps
    # its bookkeeping in annotations, never in status.
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    kopf_settings.persistence.finalizer = f"{GROUP}/finalizer"
    # One active replica: a peer that stopped renewing is presumed dead after this long
    # (a SIGKILLed operator blocks its successor at most this long).
    kopf_settings.peering.lifetime = int(os.environ.get("PUSHTASK_PEERING_LIFETIME", "30"))
    # With a peering name (the chart ships the object), its absence is an error, not a
    # silent fall back to running unguarded.
    kopf_settings.peering.mandatory = peering
    # A namespaced install has no cluster-wide read of CRDs: don't try to watch them.
    if not config.cluster_wide:
        kopf_settings.scanning.disabled = True
    # Handler retries: a temporary error (MongoDB down) is retried with its own delay.
    kopf_settings.execution.max_workers = 16


def register(
    registry: kopf.OperatorRegistry, config: OperatorSettings, *, peering: bool = True
) -> None:
    """All handlers, bound to `registry` (so tests can inspect a fresh one)."""
    res = (GROUP, VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure_kopf(settings, config, peering=peering)
        store = Store.connect(config.mongo_uri)
        await wait_for_store(store)
        kube = Kube()
        kube.probe_timeout = config.url_probe_timeout
        rt = handlers.Runtime(
            settings=config, store=store, kube=kube, degrade_base=dict(config.degraded_tiers)
        )
        memo["runtime"] = rt
        # spec.notify: sent in the background, never inside a reconcile (notifier.py).
        notifier = Notifier(store, kube, kube.post_event)
        rt.wake_notifier = notifier.wake
        memo["notifier"] = asyncio.create_task(notifier.run(), name="notifications")
        if config.degrade_configmap:
            memo["degrade"] = await follow_degrade(rt, kube, config.degrade_configmap)
        metrics.serve(
            int(os.environ.get("PUSHTASK_METRICS_PORT", "0") or 0),
            os.environ.get("POD_IP", "0.0.0.0"),
        )

    # A fresh registry has no login handler: use the kubernetes client's config loading
    # (in-cluster, else KUBECONFIG), re-run by kopf whenever credentials expire.
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        sender = memo.get("notifier")
        if isinstance(sender, asyncio.Task):
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        rt = memo.get("runtime")
        if isinstance(rt, handlers.Runtime):
            await rt.store.close()
        watcher = memo.get("degrade")
        if isinstance(watcher, DegradeWatch):
            watcher.stop()

    @kopf.on.probe(id="tasks", registry=registry)
    def tasks_probe(memo: kopf.Memo, **_: Any) -> int:
        rt = memo.get("runtime")
        return len(rt.demands) if isinstance(rt, handlers.Runtime) else 0

    @kopf.on.create(*res, registry=registry, id="reconcile")
    @kopf.on.resume(*res, registry=registry, id="reconcile")
    @kopf.on.update(*res, registry=registry, id="reconcile")
    async def changed(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        await handlers.on_change(body, memo, logger)

    # A daemon per task that sleeps until the task's next event (wakeups.py), not a timer
    # that polls every task: a task waiting for its start costs nothing until then.
    @kopf.daemon(*res, registry=registry, id="wakeups", cancellation_timeout=5)
    async def wakeups(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        await handlers.watch(body, memo, logger)

    # `kubectl push test` of a task that never ran: the pod template its test is made from
    # (a request is a fresh value of the annotation, so each one is answered). Retried no
    # longer than the tool waits: a request that cannot be answered (a spec the builder
    # refuses, set by hand) is not retried for ever.
    @kopf.on.field(
        *res,
        field=("metadata", "annotations", testsend.TEMPLATE_REQUEST),
        registry=registry,
        id="test-template",
        timeout=testsend.TEMPLATE_WAIT_SECONDS,
    )
    async def test_template(body: kopf.Body, memo: kopf.Memo, new: Any, **_: Any) -> None:
        if new:
            await handlers.on_test_template(body, memo, str(new))

    # Not optional: the finalizer stays until the runs' ledgers are deleted from MongoDB
    # (the garbage collector removes the Deployment; nothing else would remove the data).
    @kopf.on.delete(*res, registry=registry, id="forget")
    async def deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        await handlers.on_delete(body, memo)


async def follow_degrade(rt: handlers.Runtime, kube: Kube, ref: str) -> DegradeWatch:
    """Read the degrade ConfigMap before any task is reconciled (a tier degraded before
    a restart stays degraded), then follow it."""
    namespace, name = ref.split("/", 1)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    def changed(view: DegradeView) -> None:  # on the loop, called from the watch thread
        task = loop.create_task(handlers.on_degrade(rt, view))
        pending.add(task)
        task.add_done_callback(pending.discard)

    watcher = DegradeWatch(kube.api, namespace, name, loop, changed)
    first: DegradeView | None = None
    try:
        first = await asyncio.to_thread(watcher.read)
    except Exception as exc:  # the watch keeps trying; tasks run as the chart says meanwhile
        log.error("cannot read the degrade ConfigMap %s: %s", ref, exc)
    if first is not None:
        await handlers.on_degrade(rt, first)
    watcher.start(first)
    return watcher


# How long the operator waits between two tries of a MongoDB that does not answer yet.
STORE_WAIT_FIRST, STORE_WAIT_MAX = 1.0, 10.0


async def wait_for_store(store: Store) -> None:
    """Make the indexes, waiting for MongoDB as long as it takes. The chart starts the
    operator and its bundled MongoDB together: on a real node the operator asked first,
    kopf's startup failed on the 5 s server selection and the container restarted
    (seen on kind, found by its restart log). Waiting, and saying so, is what a user
    expects. kopf serves the liveness endpoint only once the startup is done: a MongoDB
    away longer than the chart's probe allows (about 70 s) still restarts the pod."""
    delay = STORE_WAIT_FIRST
    while True:
        try:
            await store.ensure_indexes()
            return
        except PyMongoError as exc:
            log.warning("MongoDB does not answer yet (%s); trying again in %.0fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_WAIT_MAX)


async def selftest(uri: str) -> int:
    store = Store.connect(uri)
    try:
        await store.db.command("ping")
        await store.ensure_indexes()
        print(f"MongoDB at {store.db.name!r} answers; indexes are in place")
        return 0
    finally:
        await store.close()


def _quiet_routine(record: logging.LogRecord) -> bool:
    """Drop kopf's "succeeded" line of every liveness probe: one every few seconds."""
    routine = record.getMessage().startswith("Activity 'tasks' succeeded")
    return not (routine and record.levelno <= logging.INFO)


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pushtask-operator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", default="run", choices=["run", "selftest"])
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true")
    scope.add_argument("-n", "--namespace", action="append", default=[])
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument("--peering", help="kopf peering object to register in")
    peering.add_argument("--standalone", action="store_true", help="no peering at all")
    parser.add_argument("--liveness", help="e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--log-level", default=os.environ.get("PUSHTASK_LOG_LEVEL", "info"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # pymongo logs every command at debug level: far too much even for debugging handlers.
    logging.getLogger("pymongo").setLevel(logging.WARNING)
    # Liveness probes every few seconds: not news.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("kopf.activities.probe").addFilter(_quiet_routine)
    if args.command == "selftest":
        uri = os.environ.get("PUSHTASK_MONGO_URI")
        if not uri:
            print("PUSHTASK_MONGO_URI is not set", file=sys.stderr)
            return 2
        return asyncio.run(selftest(uri))
    try:
        config = from_env()
    except SettingsError as exc:
        print(f"pushtask-operator: bad setting: {exc}", file=sys.stderr)
        return 2
    namespaces = list(args.namespace) or list(config.namespaces)
    if args.all_namespaces:
        namespaces = []
    config = OperatorSettings(**{**config.__dict__, "namespaces": tuple(namespaces)})
    registry = kopf.OperatorRegistry()
    register(registry, config, peering=bool(args.peering) and not args.standalone)
    kopf.run(
        registry=registry,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness,
        peering_name=args.peering,
        standalone=args.standalone or not args.peering,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
