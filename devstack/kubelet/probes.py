"""Readiness, liveness and startup probes: httpGet, tcpSocket and exec."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeTiming:
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def of(cls, probe: Mapping[str, Any]) -> ProbeTiming:
        return cls(
            initial_delay=probe.get("initialDelaySeconds") or 0,
            period=probe.get("periodSeconds") or 10,
            timeout=probe.get("timeoutSeconds") or 1,
            success_threshold=probe.get("successThreshold") or 1,
            failure_threshold=probe.get("failureThreshold") or 3,
        )


def resolve_port(port: int | str, container: Mapping[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"port {port!r} is not a named port of container {container.get('name')}")


@dataclass
class ProbeContext:
    """Where a container's probes run: its pod IP, its spec, environment and directory."""

    pod_ip: str
    container: Mapping[str, Any]
    env: Mapping[str, str]
    cwd: Path


async def _http(spec: Mapping[str, Any], ctx: ProbeContext, limit: float) -> tuple[bool, str]:
    scheme = (spec.get("scheme") or "HTTP").lower()
    host = spec.get("host") or ctx.pod_ip
    port = resolve_port(spec["port"], ctx.container)
    path = spec.get("path") or "/"
    if not path.startswith("/"):
        path = "/" + path
    headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
    headers.setdefault("User-Agent", "kube-probe/devstack")
    url = f"{scheme}://{host}:{port}{path}"
    # The kubelet does not verify a probed server's certificate either.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit)) as session:
        async with session.get(url, headers=headers, ssl=False) as resp:
            ok = 200 <= resp.status < 400
            return ok, f"HTTP probe failed with statuscode: {resp.status}" if not ok else ""


async def _tcp(spec: Mapping[str, Any], ctx: ProbeContext, limit: float) -> tuple[bool, str]:
    host = spec.get("host") or ctx.pod_ip
    port = resolve_port(spec["port"], ctx.container)
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), limit)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


async def _exec(spec: Mapping[str, Any], ctx: ProbeContext, limit: float) -> tuple[bool, str]:
    command = list(spec.get("command") or [])
    if not command:
        return False, "exec probe has no command"
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ctx.cwd,
        env=dict(ctx.env),
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False, f"command timed out after {limit:g}s"
    ok = proc.returncode == 0
    return ok, "" if ok else out.decode(errors="replace")[-512:]


async def probe_once(probe: Mapping[str, Any], ctx: ProbeContext) -> tuple[bool, str]:
    """One probe attempt: (success, message for a failure)."""
    timeout = ProbeTiming.of(probe).timeout
    try:
        if "httpGet" in probe:
            return await _http(probe["httpGet"], ctx, timeout)
        if "tcpSocket" in probe:
            return await _tcp(probe["tcpSocket"], ctx, timeout)
        if "exec" in probe:
            return await _exec(probe["exec"], ctx, timeout)
    except (OSError, TimeoutError, aiohttp.ClientError, ValueError) as e:
        return False, f"{type(e).__name__}: {e}"
    return (
        False,
        f"unsupported probe handler {sorted(probe)} (devstack runs httpGet, tcpSocket and exec)",
    )


class Prober:
    """Runs one probe every period and reports its verdict when it changes.

    The verdict flips to True after ``successThreshold`` successes in a row and to False
    after ``failureThreshold`` failures in a row. ``initial`` is the verdict before any
    attempt: False for readiness and startup, True for liveness.
    """

    def __init__(
        self,
        kind: str,
        probe: Mapping[str, Any],
        ctx: ProbeContext,
        on_change: Callable[[bool, str], Awaitable[None] | None],
        initial: bool,
    ) -> None:
        self.kind = kind
        self.probe = probe
        self.ctx = ctx
        self.timing = ProbeTiming.of(probe)
        self.on_change = on_change
        self.verdict = initial
        self.successes = 0
        self.failures = 0

    def record(self, ok: bool) -> bool:
        """Count one result; True when the verdict changed."""
        if ok:
            self.successes += 1
            self.failures = 0
            if not self.verdict and self.successes >= self.timing.success_threshold:
                self.verdict = True
                return True
        else:
            self.failures += 1
            self.successes = 0
            if self.verdict and self.failures >= self.timing.failure_threshold:
                self.verdict = False
                return True
            # Liveness/startup start True/False: a run of failures is reported even when
            # the verdict was already False, so a startup probe can give up.
            if not self.verdict and self.failures == self.timing.failure_threshold:
                return True
        return False

    async def run(self) -> None:
        await asyncio.sleep(self.timing.initial_delay)
        while True:
            ok, message = await probe_once(self.probe, self.ctx)
            if not ok:
                log.debug(
                    "%s probe of %s failed: %s", self.kind, self.ctx.container.get("name"), message
                )
            if self.record(ok):
                result = self.on_change(self.verdict, message)
                if result is not None:
                    await result
            await asyncio.sleep(self.timing.period)
