"""Pods bound to this node: one worker per pod, one runner per container.

A :class:`PodWorker` owns a pod from the moment the watch shows it until its object is
deleted: it gives the pod an IP and a kubeconfig, runs init containers then containers,
posts status, and on deletion stops the processes and removes the object. A
:class:`ContainerRunner` owns one container: start, probes, exit, back-off, restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import env as envmod
from . import process
from .api import CALL_FAILED, TRANSIENT, Api, ApiError, pod_path
from .backoff import Backoff
from .config import Settings
from .events import EventRecorder
from .ipam import IPAM
from .probes import ProbeContext, Prober, probe_once
from .state import ProcessStore
from .status import ContainerView, PodFacts, Terminated, build_status, now, parse_time, pod_phase
from .tokens import PodToken, wants_token

log = logging.getLogger(__name__)

DEFAULT_GRACE = 30


@dataclass
class Node:
    """What every pod worker shares."""

    settings: Settings
    api: Api
    ipam: IPAM
    processes: ProcessStore
    events: EventRecorder
    capacity: dict[str, str] = field(default_factory=dict)


def grace_period(pod: Mapping[str, Any]) -> float:
    """Seconds between SIGTERM and SIGKILL: the deletion's grace, else the pod's."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionGracePeriodSeconds") is not None:
        return float(meta["deletionGracePeriodSeconds"])
    value = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
    return float(DEFAULT_GRACE if value is None else value)


def working_dir(spec: Mapping[str, Any], pod_dir: Path) -> Path:
    """The container's workingDir if it exists here, else the pod's own directory."""
    working = spec.get("workingDir")
    if working and Path(working).is_dir():
        return Path(working)
    cwd = pod_dir / "work"
    cwd.mkdir(parents=True, exist_ok=True)
    return cwd


class ContainerRunner:
    """One container: runs it, probes it, restarts it per the pod's restartPolicy."""

    def __init__(self, worker: PodWorker, spec: Mapping[str, Any], init: bool = False) -> None:
        self.worker = worker
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        # A native sidecar: an init container that keeps running beside the containers.
        self.sidecar = init and spec.get("restartPolicy") == "Always"
        self.started_event = asyncio.Event()  # running, and its startup probe passed
        s = worker.node.settings
        self.backoff = Backoff(base=s.backoff_base, cap=s.backoff_max)
        self.view = ContainerView(name=self.name, image=spec.get("image", ""))
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.stop_grace: float = DEFAULT_GRACE
        self._interrupt = asyncio.Event()  # wakes a back-off sleep or a running wait
        self._kill_reason = ""  # why the kubelet is killing the running process
        self.finished = False  # will not run again
        self._probers: list[asyncio.Task[None]] = []
        self._probe_ctx: ProbeContext | None = None
        if not init and worker.init_runners:
            self.view.waiting_reason = "PodInitializing"

    # -- what the worker calls ---------------------------------------------------------

    def request_stop(self, grace: float) -> None:
        self.stopping = True
        self.stop_grace = grace
        self._kill_reason = "stop"
        self._interrupt.set()

    def adopt_history(self, previous: Mapping[str, Any] | None) -> None:
        """Take over restartCount and last state from the status a previous kubelet posted.

        A container that ran before and may not run again (restartPolicy) keeps its final
        state and is marked finished.
        """
        if not previous:
            return
        self.view.restart_count = int(previous.get("restartCount") or 0)
        state = previous.get("state") or {}
        last = (previous.get("lastState") or {}).get("terminated")
        if last:
            self.view.last_terminated = _terminated_from_api(last)
        ran: Terminated | None = None
        if "terminated" in state:
            ran = _terminated_from_api(state["terminated"])
        elif "running" in state:
            # The previous kubelet stopped it on its way out (SIGTERM).
            ran = Terminated(
                exit_code=143,
                signal=15,
                reason="Error",
                message="stopped when the devstack kubelet stopped",
                started_at=parse_time(state["running"].get("startedAt")),
                finished_at=now(),
            )
        if ran is None:
            return
        if self._should_restart(ran.exit_code):
            self.view.last_terminated = ran
            self.view.restart_count += 1
            return
        self.view.state = "terminated"
        self.view.terminated = ran
        self.finished = True

    # -- the loop ------------------------------------------------------------------------

    def _should_restart(self, exit_code: int) -> bool:
        policy = self.worker.restart_policy
        if self.sidecar:
            return True
        if self.init:
            return exit_code != 0 and policy != "Never"
        return policy == "Always" or (policy == "OnFailure" and exit_code != 0)

    def _set_waiting(self, reason: str, message: str = "") -> None:
        self.view.state = "waiting"
        self.view.waiting_reason = reason
        self.view.waiting_message = message
        self.view.ready = False
        self.view.started = False
        self.worker.mark_dirty()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the pod is being stopped."""
        self._interrupt.clear()
        if self.stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._interrupt.wait(), seconds)

    async def run(self) -> None:
        """Run until the container will not run again (stop, or restartPolicy says done)."""
        try:
            await self._loop()
        finally:
            self._cancel_probers()
            self.finished = True
            self.worker.mark_dirty()

    async def _loop(self) -> None:
        config_failures = 0
        while not self.stopping and not self.finished:
            try:
                environ, argv, cwd = await self.worker.container_config(self.spec)
            except envmod.EnvError as e:
                config_failures += 1
                self._set_waiting("CreateContainerConfigError", str(e))
                self.worker.event("Warning", "Failed", f"Error: {e}")
                await self._sleep(min(2.0 * config_failures, 20.0))
                continue
            config_failures = 0
            if self.stopping:
                return
            result = await self._run_once(environ, argv, cwd)
            if self.stopping:
                return
            if not self._should_restart(result.exit_code):
                return
            ran_for = result.finished_at - (result.started_at or result.finished_at)
            delay = self.backoff.next_delay(ran_for.total_seconds())
            self.view.last_terminated = result
            if delay > 0:
                self._set_waiting(
                    "CrashLoopBackOff",
                    f"back-off {delay:g}s restarting failed container={self.name} "
                    f"pod={self.worker.name}_{self.worker.namespace}({self.worker.uid})",
                )
                self.worker.event(
                    "Warning", "BackOff", f"Back-off restarting failed container {self.name}"
                )
                await self._sleep(delay)
                if self.stopping:
                    return
            # Counted when the container starts again, as the kubelet counts it.
            self.view.restart_count += 1

    async def _run_once(self, environ: dict[str, str], argv: list[str], cwd: Path) -> Terminated:
        """Start the process and wait for it to end (by itself or killed)."""
        log_path = self.worker.dir / f"{self.name}.log"
        if self.view.restart_count:
            # Like a runtime's per-container logs: `kubectl logs --previous` reads the last run.
            process.rotate_log(log_path, self.worker.dir / f"{self.name}.previous.log")
        started = now()
        self._interrupt.clear()
        self._kill_reason = ""
        try:
            proc = await process.start(argv, environ, cwd, log_path)
        except (OSError, ValueError) as e:  # no such executable, bad cwd, NUL in env
            message = f"failed to start {argv[0]!r}: {getattr(e, 'strerror', None) or e}"
            process.append_log(log_path, f"devstack kubelet: {message}\n")
            term = Terminated(
                exit_code=128,
                started_at=started,
                finished_at=now(),
                reason="StartError",
                message=message,
            )
            self.view.state, self.view.terminated = "terminated", term
            self.view.ready = self.view.started = False
            self.worker.event("Warning", "Failed", f"Error: {message}")
            self.worker.mark_dirty()
            return term
        self.proc = proc
        ticks = process.start_ticks(proc.pid)
        if ticks is not None:
            self.worker.node.processes.record(
                self.worker.uid, self.name, process.ProcessRecord(proc.pid, ticks)
            )
        container_id = f"devstack://{self.worker.uid}/{self.name}/{self.view.restart_count}"
        self.view.state = "running"
        self.view.running_since = started
        self.view.container_id = container_id
        self.view.terminated = None
        self.view.started = "startupProbe" not in self.spec
        if self.view.started:
            self.started_event.set()
        self.view.ready = self._ready_without_probe()
        self.worker.mark_dirty()
        self.worker.event("Normal", "Started", f"Started container {self.name} (pid {proc.pid})")
        self._start_probers(ProbeContext(self.worker.pod_ip, self.spec, environ, cwd))

        exit_wait = asyncio.ensure_future(proc.wait())
        interrupt = asyncio.ensure_future(self._interrupt.wait())
        try:
            await asyncio.wait({exit_wait, interrupt}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupt.cancel()
        self._cancel_probers()
        message = ""
        if proc.returncode is None:  # the kubelet is killing it
            grace = self.stop_grace if self.stopping else self._probe_grace()
            if self._kill_reason != "stop":
                message = self._kill_reason
                self.worker.event(
                    "Normal", "Killing", f"Container {self.name} {message}, will be restarted"
                )
            hook_started = asyncio.get_running_loop().time()
            await self._pre_stop(environ, cwd, grace)
            # The hook spends the grace period; the kubelet leaves at least 2 s for SIGTERM.
            spent = asyncio.get_running_loop().time() - hook_started
            await process.stop(proc, max(grace - spent, min(2.0, grace)))
        else:
            process.kill_leftovers(proc.pid)
        await exit_wait
        assert proc.returncode is not None
        self.worker.node.processes.record(self.worker.uid, self.name, None)
        self.proc = None
        code, sig = process.exit_status(proc.returncode)
        term = Terminated(
            exit_code=code,
            signal=sig,
            started_at=started,
            finished_at=now(),
            message=message,
            container_id=container_id,
        )
        self.view.state, self.view.terminated = "terminated", term
        self.view.ready = False
        self.view.started = False
        self.worker.mark_dirty()
        log.info(
            "%s/%s container %s exited with %d",
            self.worker.namespace,
            self.worker.name,
            self.name,
            code,
        )
        return term

    def _ready_without_probe(self) -> bool:
        # Init containers are never "ready"; others are ready once running unless probed.
        return (
            (not self.init or self.sidecar)
            and "readinessProbe" not in self.spec
            and "startupProbe" not in self.spec
        )

    def _probe_grace(self) -> float:
        probe = self.spec.get("livenessProbe") or self.spec.get("startupProbe") or {}
        value = probe.get("terminationGracePeriodSeconds")
        return float(value) if value is not None else grace_period(self.worker.pod)

    async def _pre_stop(self, environ: dict[str, str], cwd: Path, grace: float) -> None:
        """The container's preStop hook (exec or httpGet), bounded by the grace period."""
        hook = ((self.spec.get("lifecycle") or {}).get("preStop")) or {}
        if not hook or grace <= 0:
            return
        if "sleep" in hook:
            await asyncio.sleep(min(float(hook["sleep"].get("seconds", 0)), grace))
            return
        probe = {**hook, "timeoutSeconds": max(int(grace), 1)}
        ok, message = await probe_once(
            probe, ProbeContext(self.worker.pod_ip, self.spec, environ, cwd)
        )
        if not ok:
            self.worker.event("Warning", "FailedPreStopHook", message)

    # -- probes ---------------------------------------------------------------------------

    def _start_probers(self, ctx: ProbeContext) -> None:
        self._probe_ctx = ctx
        startup = self.spec.get("startupProbe")
        if startup:
            self._launch(Prober("startup", startup, ctx, self._on_startup, initial=False))
        else:
            self._start_steady_probers(ctx)

    def _start_steady_probers(self, ctx: ProbeContext) -> None:
        readiness = self.spec.get("readinessProbe")
        liveness = self.spec.get("livenessProbe")
        if readiness and (not self.init or self.sidecar):
            self._launch(Prober("readiness", readiness, ctx, self._on_readiness, initial=False))
        if liveness and (not self.init or self.sidecar):
            self._launch(Prober("liveness", liveness, ctx, self._on_liveness, initial=True))

    def _launch(self, prober: Prober) -> None:
        self._probers.append(asyncio.create_task(prober.run(), name=f"probe-{self.name}"))

    def _cancel_probers(self) -> None:
        for task in self._probers:
            task.cancel()
        self._probers.clear()

    def _kill(self, reason: str) -> None:
        if not self._kill_reason:
            self._kill_reason = reason
        self._interrupt.set()

    def _on_startup(self, ok: bool, message: str) -> None:
        if ok:
            self.view.started = True
            self.started_event.set()
            self.view.ready = "readinessProbe" not in self.spec
            self.worker.mark_dirty()
            self.worker.event("Normal", "Started", f"Startup probe of {self.name} succeeded")
            # Readiness and liveness probes start once startup has succeeded.
            if self._probe_ctx is not None:
                self._start_steady_probers(self._probe_ctx)
        else:
            self.worker.event("Warning", "Unhealthy", f"Startup probe failed: {message}")
            self._kill("failed startup probe")

    def _on_readiness(self, ok: bool, message: str) -> None:
        if self.view.state == "running" and self.view.ready != ok:
            self.view.ready = ok
            self.worker.mark_dirty()
        if not ok:
            self.worker.event("Warning", "Unhealthy", f"Readiness probe failed: {message}")

    def _on_liveness(self, ok: bool, message: str) -> None:
        if not ok:
            self.worker.event("Warning", "Unhealthy", f"Liveness probe failed: {message}")
            self._kill("failed liveness probe")


def _terminated_from_api(t: Mapping[str, Any]) -> Terminated:
    return Terminated(
        exit_code=int(t.get("exitCode", 0)),
        signal=t.get("signal"),
        reason=t.get("reason", ""),
        message=t.get("message", ""),
        started_at=parse_time(t.get("startedAt")),
        finished_at=parse_time(t.get("finishedAt")) or now(),
        container_id=t.get("containerID", ""),
    )


class PodWorker:
    """Everything the kubelet does for one pod (one UID)."""

    def __init__(self, node: Node, pod: dict[str, Any]) -> None:
        self.node = node
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        spec = pod.get("spec") or {}
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.dir = node.settings.pod_dir(self.namespace, self.name)
        self.pod_ip = ""
        self.start_time = parse_time((pod.get("status") or {}).get("startTime")) or now()
        self.init_runners: list[ContainerRunner] = []
        self.init_runners = [
            ContainerRunner(self, c, init=True) for c in spec.get("initContainers") or []
        ]
        self.runners = [ContainerRunner(self, c) for c in spec.get("containers") or []]
        self.init_done = not self.init_runners
        self.init_failed = False
        self.token: PodToken | None = None
        self.deleting = asyncio.Event()  # deletionTimestamp seen, or the object is gone
        self.object_gone = False
        self.shutting_down = False  # the kubelet stops; the pod stays
        self._dirty = asyncio.Event()
        self._last_sent: dict[str, Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._runner_tasks: list[asyncio.Task[None]] = []
        self._sidecar_tasks: list[asyncio.Task[None]] = []
        self._status_poster: asyncio.Task[None] | None = None

    # -- from the watch ------------------------------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting.set()
        # Readiness gates are set by others: recompute Ready when the pod changes.
        self.mark_dirty()

    def removed(self) -> None:
        """The object is gone from the API (force-deleted, or our own final delete)."""
        self.object_gone = True
        self.deleting.set()

    # -- helpers ----------------------------------------------------------------------

    def mark_dirty(self) -> None:
        self._dirty.set()

    def event(self, type_: str, reason: str, message: str) -> None:
        self.node.events.pod_event(self.pod, type_, reason, message)

    @property
    def terminal(self) -> bool:
        return (self.pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")

    def phase(self) -> str:
        views = [r.view for r in self.runners]
        return pod_phase(self.restart_policy, views, self.init_done, self.init_failed)

    def build_status(self) -> dict[str, Any]:
        facts = PodFacts(
            pod_ip=self.pod_ip,
            host_ip=self.node.settings.host_ip,
            start_time=self.start_time,
            phase=self.phase(),
            init_done=self.init_done,
            sandbox_ready=bool(self.pod_ip),
            init_containers=[r.view for r in self.init_runners],
        )
        previous = (self._last_sent or {}).get("conditions")
        return build_status(
            self.pod, [r.view for r in self.runners], facts, previous_conditions=previous
        )

    async def _fetch(self, kind: str, name: str) -> envmod.ObjectData:
        """A referenced Secret/ConfigMap's data; None when it does not exist."""
        resource = "secrets" if kind == "Secret" else "configmaps"
        path = f"/api/v1/namespaces/{self.namespace}/{resource}/{name}"
        for attempt in range(6):
            try:
                obj = await self.node.api.get(path)
                if kind == "Secret":
                    return envmod.decode_secret(obj.get("data"))
                data = dict(obj.get("data") or {})
                return data
            except ApiError as e:
                if e.status == 404:
                    return None
                # 403 right after binding: the node authorizer's graph has not yet seen
                # that this pod references the object. It catches up within moments.
                if e.status == 403 and attempt < 5:
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                raise envmod.EnvError(f"{kind.lower()} {name!r}: {e.reason}") from e
            except TRANSIENT as e:
                # The API server is unreachable: the runner retries, as for a missing key.
                raise envmod.EnvError(f"cannot read {kind.lower()} {name!r}: {e!r}") from e
        raise AssertionError("unreachable")

    async def container_config(
        self, spec: Mapping[str, Any]
    ) -> tuple[dict[str, str], list[str], Path]:
        """Environment, argv and working directory for one start of a container."""
        refs = envmod.references(spec)
        secrets = {n: await self._fetch("Secret", n) for n in sorted(refs.secrets)}
        configmaps = {n: await self._fetch("ConfigMap", n) for n in sorted(refs.configmaps)}
        resolved = envmod.resolve_env(
            self.pod,
            spec,
            pod_ip=self.pod_ip,
            host_ip=self.node.settings.host_ip,
            secrets=secrets,
            configmaps=configmaps,
            capacity=self.node.capacity,
        )
        environ = envmod.base_environment(self.name)
        if self.token is not None:
            environ["KUBECONFIG"] = str(self.token.path)
        environ.update(resolved)  # the pod's own KUBECONFIG, if any, wins
        argv = envmod.command_line(spec, environ)
        return environ, argv, working_dir(spec, self.dir)

    # -- life ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("pod worker %s/%s failed", self.namespace, self.name)
            self.event("Warning", "KubeletError", f"devstack kubelet: {e!r}")
            raise
        finally:
            for task in self._tasks:
                task.cancel()

    def _prepare_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        marker = self.dir / ".uid"
        if not marker.exists() or marker.read_text() != self.uid:
            # A new pod of the same name: its logs start empty.
            for old in self.dir.glob("*.log"):
                old.unlink()
            work = self.dir / "work"
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
            marker.write_text(self.uid)

    async def _run(self) -> None:
        settings = self.node.settings
        if self.terminal:
            # Finished before this kubelet started: nothing to run, only the deletion.
            self.node.ipam.release(self.uid)
            await self.deleting.wait()
            if not self.shutting_down:
                await self._delete_object()
            return
        if self.pod["metadata"].get("deletionTimestamp"):
            # Deleted while no kubelet ran it: nothing runs; remove it.
            await self._finish_deletion()
            return

        if (self.pod.get("spec") or {}).get("hostNetwork"):
            self.pod_ip = settings.host_ip
        else:
            prefer = (self.pod.get("status") or {}).get("podIP")
            self.pod_ip = self.node.ipam.allocate(
                self.uid, f"{self.namespace}/{self.name}", prefer=prefer
            )
        self._prepare_dir()
        previous = {
            c["name"]: c for c in (self.pod.get("status") or {}).get("containerStatuses") or []
        }
        for runner in self.runners:
            runner.adopt_history(previous.get(runner.name))
        if any(r.view.restart_count or r.finished for r in self.runners):
            # Init containers ran to completion before the kubelet restarted.
            self.init_done = True
            previous_init = {
                c["name"]: c
                for c in (self.pod.get("status") or {}).get("initContainerStatuses") or []
            }
            for runner in self.init_runners:
                if runner.sidecar:
                    runner.adopt_history(previous_init.get(runner.name))
                    continue  # started again below, before the containers
                done = ((previous_init.get(runner.name) or {}).get("state") or {}).get("terminated")
                if done:
                    runner.view.state = "terminated"
                    runner.view.terminated = _terminated_from_api(done)
                runner.finished = True
        self._status_poster = asyncio.create_task(
            self._post_status_loop(), name=f"status-{self.name}"
        )
        self._tasks.append(self._status_poster)
        self.mark_dirty()

        if wants_token(self.pod):
            self.token = PodToken(self.node.api, self.pod, self.dir, settings.token_ttl)
            if not await self._until_deleting(self._fetch_token()):
                await self._finish_deletion()
                return
            self._tasks.append(
                asyncio.create_task(self.token.keep_fresh(), name=f"token-{self.name}")
            )

        if not self.init_done:
            # A runner task, not a cancellable step: on deletion its processes must get
            # their SIGTERM like any container's (see _finish_deletion).
            init = asyncio.create_task(self._run_init_containers(), name=f"init-{self.name}")
            self._runner_tasks = [init]
            deletion_first: asyncio.Future[Any] = asyncio.ensure_future(self.deleting.wait())
            await asyncio.wait([init, deletion_first], return_when=asyncio.FIRST_COMPLETED)
            deletion_first.cancel()
            if not init.done():
                await self._finish_deletion()
                return
            self._runner_tasks = []
        else:
            for runner in self.init_runners:
                if runner.sidecar:
                    self._start_sidecar(runner)

        if not self.init_failed:
            self._runner_tasks = [
                asyncio.create_task(r.run(), name=f"ctr-{r.name}")
                for r in self.runners
                if not r.finished
            ]
        containers_done: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*self._runner_tasks, return_exceptions=True)
        )
        deletion: asyncio.Future[Any] = asyncio.ensure_future(self.deleting.wait())
        await asyncio.wait([containers_done, deletion], return_when=asyncio.FIRST_COMPLETED)
        if not deletion.done():
            # Every container is done for good: the pod is Succeeded or Failed. Its
            # sidecars have nothing left to serve.
            await self._stop_sidecars(grace_period(self.pod))
            log.info("pod %s/%s is %s", self.namespace, self.name, self.phase())
            self.mark_dirty()
            self.node.ipam.release(self.uid)
            await deletion
        deletion.cancel()
        await self._finish_deletion()
        containers_done.cancel()

    async def _until_deleting(self, work: Any) -> bool:
        """Run ``work`` unless the pod gets deleted first; True if it completed."""
        task = asyncio.ensure_future(work)
        deletion = asyncio.ensure_future(self.deleting.wait())
        await asyncio.wait({task, deletion}, return_when=asyncio.FIRST_COMPLETED)
        deletion.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    async def _fetch_token(self) -> None:
        assert self.token is not None
        delay = 0.2
        attempt = 0
        while True:
            try:
                await self.token.fetch()
                return
            except CALL_FAILED as e:
                # Refusals right after binding are normal: the node authorizer's graph and
                # NodeRestriction's pod cache have not seen the binding yet. Say so loudly
                # only when it lasts.
                attempt += 1
                reason = e.reason if isinstance(e, ApiError) else repr(e)
                msg = (
                    f"cannot get a token for serviceaccount {self.token.service_account}: {reason}"
                )
                log.log(
                    logging.WARNING if attempt > 3 else logging.DEBUG,
                    "%s/%s: %s",
                    self.namespace,
                    self.name,
                    msg,
                )
                for r in self.runners:
                    r.view.waiting_reason, r.view.waiting_message = "ContainerCreating", msg
                self.mark_dirty()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    def _start_sidecar(self, runner: ContainerRunner) -> None:
        self._sidecar_tasks.append(asyncio.create_task(runner.run(), name=f"sidecar-{runner.name}"))

    async def _stop_sidecars(self, grace: float) -> None:
        for runner in self.init_runners:
            if runner.sidecar:
                runner.request_stop(grace)
        if self._sidecar_tasks:
            await asyncio.gather(*self._sidecar_tasks, return_exceptions=True)

    async def _run_init_containers(self) -> None:
        for runner in self.init_runners:
            if self.deleting.is_set():
                return
            if runner.sidecar:
                # The next init container starts once this one runs (and its startup
                # probe passed); it keeps running, restarted whatever the pod's policy.
                self._start_sidecar(runner)
                started = asyncio.ensure_future(runner.started_event.wait())
                await asyncio.wait(
                    [started, self._sidecar_tasks[-1]], return_when=asyncio.FIRST_COMPLETED
                )
                started.cancel()
                if runner.stopping or not runner.started_event.is_set():
                    return
                continue
            await runner.run()
            if runner.stopping:
                return
            term = runner.view.terminated
            if term is None or term.exit_code != 0:
                # Never: the pod has failed. Otherwise runner.run only returns when stopped.
                self.init_failed = True
                self.mark_dirty()
                return
        self.init_done = True
        self.mark_dirty()

    async def _finish_deletion(self) -> None:
        """Stop every container with the grace period, then remove the pod object."""
        grace = grace_period(self.pod)
        if self.shutting_down:
            grace = min(grace, self.node.settings.shutdown_grace)
        if any(r.proc is not None for r in self.runners + self.init_runners):
            self.event("Normal", "Killing", f"Stopping containers (grace period {grace:g}s)")
        for runner in self.runners + self.init_runners:
            runner.request_stop(grace)
        if self._runner_tasks or self._sidecar_tasks:
            await asyncio.gather(*self._runner_tasks, *self._sidecar_tasks, return_exceptions=True)
        if self.shutting_down:
            return  # the pod stays bound; the next kubelet restarts it
        self.mark_dirty()
        await self._flush_status()
        await self._delete_object()

    async def _delete_object(self) -> None:
        """The real kubelet's last step: delete with grace 0, guarded by the UID."""
        # Before the delete: once the object is gone a new pod of the same name may take
        # over this pod's directory, and its kubeconfig must survive our cleanup.
        self._cleanup()
        if not self.object_gone:
            body = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid},
            }
            for attempt in range(10):
                try:
                    await self.node.api.delete(pod_path(self.namespace, self.name), body)
                    break
                except ApiError as e:
                    if e.status in (404, 409):  # gone, or a new pod of the same name
                        break
                    log.warning("delete %s/%s: %s", self.namespace, self.name, e)
                except TRANSIENT as e:
                    log.warning("delete %s/%s: %r", self.namespace, self.name, e)
                await asyncio.sleep(0.5 * (attempt + 1))
        log.info("pod %s/%s removed", self.namespace, self.name)

    def _cleanup(self) -> None:
        marker = self.dir / ".uid"
        owns_dir = marker.exists() and marker.read_text() == self.uid
        if self.token is not None and owns_dir:
            self.token.remove()
        self.node.ipam.release(self.uid)
        self.node.processes.forget_pod(self.uid)

    async def shutdown(self) -> None:
        """The kubelet is stopping: stop the processes, leave the pod and its IP."""
        self.shutting_down = True
        self.deleting.set()

    # -- status -------------------------------------------------------------------------

    async def _flush_status(self) -> None:
        """Post the current status now (the final one before the object goes)."""
        if self.object_gone:
            return
        with contextlib.suppress(ApiError, *TRANSIENT):
            await self._post(self.build_status())

    async def _post(self, status: dict[str, Any]) -> None:
        if status == self._last_sent:
            return
        body = {"metadata": {"uid": self.uid}, "status": status}
        result = await self.node.api.patch(pod_path(self.namespace, self.name, "status"), body)
        self._last_sent = status
        if result.get("metadata", {}).get("uid") == self.uid:
            self.pod = result

    async def _post_status_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await asyncio.sleep(0.05)  # let a burst of changes become one patch
            if self.object_gone or self.shutting_down:
                continue
            try:
                await self._post(self.build_status())
            except ApiError as e:
                if e.status in (404, 409):
                    log.info("status of %s/%s not posted: %s", self.namespace, self.name, e.reason)
                    continue
                log.warning("status of %s/%s: %s", self.namespace, self.name, e)
                await asyncio.sleep(1)
                self._dirty.set()
            except TRANSIENT as e:
                log.warning("status of %s/%s: %r", self.namespace, self.name, e)
                await asyncio.sleep(1)
                self._dirty.set()


def remove_old_pod_dirs(pods_dir: Path, live_uids: set[str], keep_seconds: float = 86400) -> int:
    """Forget pods deleted more than a day ago: their logs, work dirs, empty namespaces.

    Logs of recently deleted pods stay readable (`devstack logs`) for a post-mortem.
    """
    removed = 0
    cutoff = time.time() - keep_seconds
    for marker in pods_dir.glob("*/*/.uid"):
        pod_dir = marker.parent
        try:
            stale = (
                marker.read_text() not in live_uids
                and max(p.stat().st_mtime for p in pod_dir.iterdir()) < cutoff
            )
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(pod_dir, ignore_errors=True)
            removed += 1
    for ns_dir in pods_dir.glob("*"):
        with contextlib.suppress(OSError):
            ns_dir.rmdir()  # only succeeds when empty
    return removed


class PodManager:
    """Watches the pods bound to this node and keeps one worker per pod."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.workers: dict[str, PodWorker] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._done: set[str] = set()  # UIDs whose object this kubelet has deleted
        self.synced = asyncio.Event()

    def _selector(self) -> dict[str, str]:
        # Node authorization only lets a node list pods with exactly this selector.
        return {"fieldSelector": f"spec.nodeName={self.node.settings.node_name}"}

    def _upsert(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(pod)
            return
        if uid in self._done:
            return
        worker = PodWorker(self.node, pod)
        self.workers[uid] = worker
        task = asyncio.create_task(worker.run(), name=f"pod-{worker.namespace}/{worker.name}")
        self.tasks[uid] = task
        task.add_done_callback(functools.partial(self._forget, uid))
        worker.update(pod)

    def _forget(self, uid: str, _task: asyncio.Task[None] | None = None) -> None:
        worker = self.workers.pop(uid, None)
        self.tasks.pop(uid, None)
        if worker is not None and not worker.shutting_down:
            self._done.add(uid)
            if len(self._done) > 10000:
                self._done.clear()

    def is_running(self, namespace: str, name: str, container: str) -> bool:
        """Whether that container's process runs now (for following its log)."""
        for worker in self.workers.values():
            if worker.namespace == namespace and worker.name == name:
                return any(
                    r.name == container and r.proc is not None
                    for r in worker.runners + worker.init_runners
                )
        return False

    def _removed(self, pod: Mapping[str, Any]) -> None:
        worker = self.workers.get(pod["metadata"]["uid"])
        if worker is not None:
            worker.removed()

    async def run(self) -> None:
        api = self.node.api
        resource_version: str | None = None
        while True:
            try:
                if resource_version is None:
                    listing = await api.get("/api/v1/pods", self._selector())
                    resource_version = listing["metadata"]["resourceVersion"]
                    seen = set()
                    for pod in listing.get("items") or []:
                        seen.add(pod["metadata"]["uid"])
                        self._upsert(pod)
                    for uid, worker in list(self.workers.items()):
                        if uid not in seen:
                            worker.removed()
                    if not self.synced.is_set():
                        # Addresses of pods deleted while no kubelet ran are free again.
                        for uid in self.node.ipam.allocations():
                            if uid not in seen:
                                self.node.ipam.release(uid)
                        remove_old_pod_dirs(self.node.settings.pods_dir, seen)
                        self.synced.set()
                params = {**self._selector(), "resourceVersion": resource_version}
                async for event in api.watch("/api/v1/pods", params):
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        log.info("pod watch ended: %s", obj.get("message"))
                        resource_version = None
                        break
                    resource_version = obj["metadata"]["resourceVersion"]
                    if kind in ("ADDED", "MODIFIED"):
                        self._upsert(obj)
                    elif kind == "DELETED":
                        self._removed(obj)
            except ApiError as e:
                log.warning("pod watch: %s", e)
                if e.status == 410:
                    resource_version = None
                await asyncio.sleep(1)
            except TRANSIENT as e:
                log.warning("pod watch: %r", e)
                await asyncio.sleep(1)
            except Exception as e:  # aiohttp's payload errors and the like: relist
                log.warning("pod watch: %r", e)
                resource_version = None
                await asyncio.sleep(1)

    async def shutdown(self) -> None:
        """Stop every pod's processes (with its grace period, capped); keep the pods."""
        for worker in list(self.workers.values()):
            await worker.shutdown()
        tasks = list(self.tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=self.node.settings.shutdown_grace + 5)
        for task in tasks:
            task.cancel()
