"""The kubelet's HTTPS endpoint, for ``kubectl logs`` (the API server proxies it here).

Only what reads the log files: ``/containerLogs/{namespace}/{pod}/{container}`` with
``follow``, ``tailLines``, ``limitBytes`` and ``previous``, plus ``/healthz``. Like a real
kubelet without a serving certificate, it makes itself a self-signed one; the API server
does not verify it unless started with ``--kubelet-certificate-authority``. It listens on
the node's loopback address only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import re
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .config import Settings

log = logging.getLogger(__name__)

# Names as Kubernetes allows them (DNS labels/subdomains): never a path component like '..'.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def self_signed(cert_path: Path, key_path: Path, host_ip: str, node_name: str) -> None:
    """A serving certificate for the kubelet, made once and kept."""
    if cert_path.exists() and key_path.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{node_name}@devstack")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(node_name), x509.IPAddress(ipaddress.ip_address(host_ip))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def tail(data: bytes, lines: int) -> bytes:
    if lines < 0:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def read_log(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def read_from(path: Path, offset: int) -> tuple[bytes, int]:
    """What was appended to ``path`` after ``offset``, and the offset to go on from.

    A file that shrank was rotated by a restart: the new run is read from its start.
    """
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            if size < offset:
                offset = 0
            fh.seek(offset)
            chunk = fh.read(size - offset)
    except FileNotFoundError:
        return b"", 0
    return chunk, offset + len(chunk)


class KubeletServer:
    """Serves container logs from ``<state-dir>/pods/<ns>/<pod>/<container>.log``."""

    def __init__(self, settings: Settings, is_running: Callable[[str, str, str], bool]) -> None:
        self.settings = settings
        self.is_running = is_running  # (namespace, pod, container) -> process alive
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        s = self.settings
        cert, key = s.state_dir / "pki" / "kubelet.crt", s.state_dir / "pki" / "kubelet.key"
        self_signed(cert, key, s.host_ip, s.node_name)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._logs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host_ip, s.port, ssl_context=ctx)
        try:
            await site.start()
            log.info("serving container logs on https://%s:%d", s.host_ip, s.port)
        except OSError as e:
            # Not fatal: pods still run; only `kubectl logs` is unavailable.
            log.warning(
                "cannot listen on %s:%d (%s): kubectl logs will not work",
                s.host_ip,
                s.port,
                e.strerror,
            )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        ns, pod, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        if not all(_NAME.match(n) for n in (ns, pod, container)):
            raise web.HTTPBadRequest(text="bad name")
        q = request.query
        previous = q.get("previous") == "true"
        path = self.settings.pod_dir(ns, pod) / (
            f"{container}.previous.log" if previous else f"{container}.log"
        )
        data = read_log(path)
        if not data and not path.exists():
            raise web.HTTPNotFound(
                text=f"previous terminated container {container!r} in pod {pod!r} not found"
                if previous
                else f"container {container!r} in pod {pod!r} has no log yet"
            )
        data = tail(data, int(q.get("tailLines", "-1")))
        limit = int(q.get("limitBytes", "0")) or None
        if limit is not None:
            data = data[:limit]
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(data)
        if q.get("follow") == "true" and not previous and limit is None:
            await self._follow(resp, path, ns, pod, container)
        await resp.write_eof()
        return resp

    async def _follow(
        self, resp: web.StreamResponse, path: Path, ns: str, pod: str, container: str
    ) -> None:
        """Stream what the container writes until it stops (or the client goes)."""
        _, offset = read_from(path, 0)
        idle = 0.0
        while True:
            await asyncio.sleep(0.25)
            chunk, offset = read_from(path, offset)
            if chunk:
                await resp.write(chunk)
                idle = 0.0
            elif not self.is_running(ns, pod, container):
                idle += 0.25
                if idle >= 1.0:  # drained what the exited process wrote
                    return
