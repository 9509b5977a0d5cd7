"""`pushtask-tracker`: the redirect service of tracked links, and conversions.

pushtask-tracker [--host IP] [--port 8080]

Environment: POD_IP (the default host), PUSHTASK_TRACKER_PORT, PUSHTASK_MONGO_URI (the
store: runs, clicks and conversions), PUSHTASK_TRACKER_KEY (the key that signs tracked
links: the same Secret key the tasks' spec.message.tracking.secretRef names),
PUSHTASK_TRACKER_KEY_PREVIOUS (a key rotation: links signed with it still redirect),
PUSHTASK_TRACKER_CONVERSIONS_TOKEN (the bearer token of POST /v1/conversions; unset:
conversions are refused).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from aiohttp import web

from pushtask.tracking import KEY_ENV, PREVIOUS_KEY_ENV
from pushtask_tracker.app import Tracker, make_app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(prog="pushtask-tracker", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=env.get("POD_IP") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(env.get("PUSHTASK_TRACKER_PORT", 8080)))
    return parser.parse_args(argv)


def keys_from_env(env: Mapping[str, str]) -> list[bytes]:
    """The verifying keys, current first (a Secret made with --from-file may end in a
    newline: stripped, as the worker strips the key it signs with)."""
    keys = [env.get(KEY_ENV, "").strip().encode(), env.get(PREVIOUS_KEY_ENV, "").strip().encode()]
    return [k for k in keys if k]


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    keys = keys_from_env(os.environ)
    uri = os.environ.get("PUSHTASK_MONGO_URI", "")
    if not keys or not uri:
        print(f"pushtask-tracker: {KEY_ENV} and PUSHTASK_MONGO_URI are required", file=sys.stderr)
        return 1
    token = os.environ.get("PUSHTASK_TRACKER_CONVERSIONS_TOKEN", "")
    if not token.strip():
        logging.info("no conversions token configured: POST /v1/conversions is refused")
    tracker = Tracker(keys=keys, conversions_token=token, mongo_uri=uri)
    web.run_app(make_app(tracker), host=args.host, port=args.port,
                shutdown_timeout=5, access_log=None, print=lambda *_: None)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
