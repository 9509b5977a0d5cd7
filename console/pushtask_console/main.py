"""`pushtask-console`: the web console's server.

pushtask-console [--host IP] [--port 8080] [--namespaces a,b] [--token-file PATH]
                 [--reads-need-token]

Environment: POD_IP (the default host), PUSHTASK_NAMESPACES (served namespaces, comma
list; empty: all), PUSHTASK_CONSOLE_TOKEN (the bearer token; --token-file wins),
PUSHTASK_CONSOLE_READS_NEED_TOKEN (true/false), PUSHTASK_MONGO_URI (the ledger: workers,
failure samples, per-recipient lookup; without it those parts say so). The cluster is
reached as kubectl would (KUBECONFIG, else in-cluster).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from pushtask_client.taskapi import Cluster, ClusterError
from pushtask_console.app import Console, make_app
from pushtask_console.auth import Auth

TRUE = ("1", "true", "yes", "on")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(prog="pushtask-console", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=env.get("POD_IP") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(env.get("PUSHTASK_CONSOLE_PORT", 8080)))
    parser.add_argument("--namespaces", default=env.get("PUSHTASK_NAMESPACES", ""))
    parser.add_argument("--token-file", default=env.get("PUSHTASK_CONSOLE_TOKEN_FILE", ""))
    parser.add_argument(
        "--reads-need-token",
        action="store_true",
        default=env.get("PUSHTASK_CONSOLE_READS_NEED_TOKEN", "").lower() in TRUE,
    )
    parser.add_argument("--kubeconfig", default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    token = (
        Path(args.token_file).read_text()
        if args.token_file
        else os.environ.get("PUSHTASK_CONSOLE_TOKEN", "")
    )
    if not token.strip():
        logging.warning("no token configured: every action will be refused")
    try:
        cluster = Cluster(args.kubeconfig)
    except ClusterError as error:
        print(f"pushtask-console: {error}", file=sys.stderr)
        return 1
    console = Console(
        cluster=cluster,
        auth=Auth(token, args.reads_need_token),
        namespaces=[ns.strip() for ns in args.namespaces.split(",") if ns.strip()],
        mongo_uri=os.environ.get("PUSHTASK_MONGO_URI", ""),
    )
    web.run_app(make_app(console), host=args.host, port=args.port, shutdown_timeout=5,
                access_log=None, print=lambda *_: None)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
