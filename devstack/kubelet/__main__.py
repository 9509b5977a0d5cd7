"""devstack's local kubelet: runs the pods bound to one Node as local processes.

``python -m devstack.kubelet --kubeconfig PATH --node-name NAME --state-dir DIR``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from .agent import AlreadyRunning, run
from .config import Settings


def parse_args(argv: list[str] | None = None) -> tuple[Settings, bool]:
    env = Settings.env_defaults()
    p = argparse.ArgumentParser(prog="python -m devstack.kubelet", description=__doc__)
    p.add_argument(
        "--kubeconfig",
        type=Path,
        required=True,
        help="credentials of the node (CN=system:node:NAME, O=system:nodes)",
    )
    p.add_argument("--node-name", required=True)
    p.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="pod IPs, pids, pod logs (pods/<ns>/<pod>/<container>.log)",
    )
    p.add_argument(
        "--backoff-base",
        type=float,
        default=env["backoff_base"],
        help="first crash-loop back-off in seconds (env DEVSTACK_KUBELET_BACKOFF_BASE, default 10)",
    )
    p.add_argument(
        "--backoff-max",
        type=float,
        default=env["backoff_max"],
        help="longest back-off (env DEVSTACK_KUBELET_BACKOFF_MAX, default 300)",
    )
    p.add_argument(
        "--pod-network", default="127.10.0.0/16", help="block of 127.0.0.0/8 that pod IPs come from"
    )
    p.add_argument(
        "--cpu",
        default="",
        help="CPU capacity to advertise (default 8 per core: requests do not confine"
        " local processes)",
    )
    p.add_argument("--max-pods", type=int, default=110)
    p.add_argument(
        "--register-with-taints",
        default="",
        help="comma-separated key=value:Effect taints for the new Node",
    )
    p.add_argument(
        "--port",
        type=int,
        default=10250,
        help="HTTPS port serving container logs to the API server (0: none)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=20.0,
        help="at kubelet shutdown, the longest wait for a pod to stop",
    )
    p.add_argument(
        "--token-ttl",
        type=int,
        default=3600,
        help="lifetime asked for service-account tokens (at least 600)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    taints = tuple(t for t in a.register_with_taints.split(",") if t)
    return Settings(
        node_name=a.node_name,
        state_dir=a.state_dir.resolve(),
        kubeconfig=a.kubeconfig.resolve(),
        backoff_base=a.backoff_base,
        backoff_max=a.backoff_max,
        pod_network=a.pod_network,
        shutdown_grace=a.shutdown_grace,
        token_ttl=a.token_ttl,
        port=a.port,
        cpu=a.cpu,
        max_pods=a.max_pods,
        taints=taints,
    ), bool(a.verbose)


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run(settings, stop)


def main(argv: list[str] | None = None) -> int:
    settings, verbose = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    try:
        asyncio.run(_main(settings))
    except AlreadyRunning as e:
        print(f"devstack kubelet: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
