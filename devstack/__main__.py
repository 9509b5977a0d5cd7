"""``python -m devstack up | down | status | env | logs POD | build | tool-path TOOL | reset``."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from devstack import build
from devstack.stack import Stack, StackError


def _cmd_up(args: argparse.Namespace) -> int:
    Stack().up(args.only)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    Stack().down(args.only)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    rows = Stack().status()
    width = max(len(r["component"]) for r in rows)
    for r in rows:
        print(f"{r['component']:<{width}}  {r['pid']:>7}  {r['state']}")
    return 0 if all(r["state"] in ("healthy", "stopped") for r in rows) else 1


def _cmd_env(args: argparse.Namespace) -> int:
    print("\n".join(Stack().env_lines()))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    tools = args.tools or list(build.ALL_TOOLS)
    for tool in tools:
        build.tool_path(tool)  # raises on an unknown name before any build starts
    t0 = time.monotonic()
    for tool, path in build.ensure_tools(tools).items():
        print(f"{tool}\t{path}")
    print(f"[devstack] build done in {time.monotonic() - t0:.0f}s", file=sys.stderr)
    return 0


def _cmd_tool_path(args: argparse.Namespace) -> int:
    print(build.ensure_tool(args.tool) if args.build else build.tool_path(args.tool))
    return 0


def _cmd_reset(args: argparse.Namespace) -> int:
    stack = Stack()
    stack.down()
    shutil.rmtree(stack.paths.root, ignore_errors=True)
    print(f"[devstack] removed {stack.paths.root}", file=sys.stderr)
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    namespace, _, pod = args.pod.rpartition("/")
    namespace = namespace or args.namespace
    pod_dir = Stack().pod_log_dir(namespace, pod)
    logs = sorted(pod_dir.glob("*.log"))
    if args.container:
        logs = [p for p in logs if p.stem == args.container]
    if not logs:
        print(f"no logs for pod {namespace}/{pod} under {pod_dir}", file=sys.stderr)
        return 1
    for log in logs:
        if len(logs) > 1:
            print(f"==> {log.stem} <==")
        sys.stdout.write(log.read_text(errors="replace"))
    if args.follow:
        _follow(logs)
    return 0


def _follow(logs: list[Path]) -> None:
    offsets = {p: p.stat().st_size for p in logs}
    try:
        while True:
            for p in logs:
                size = p.stat().st_size if p.exists() else 0
                if size < offsets[p]:  # restarted container: file truncated/recreated
                    offsets[p] = 0
                if size > offsets[p]:
                    with p.open("rb") as fh:
                        fh.seek(offsets[p])
                        sys.stdout.write(fh.read().decode(errors="replace"))
                        sys.stdout.flush()
                    offsets[p] = size
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description="A local Kubernetes control plane and MongoDB-wire server, no Docker.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    only_help = "components or groups to act on: mongo, cluster, or component names"
    p = sub.add_parser("up", help="build what is missing, start, wait until healthy")
    p.add_argument("--only", action="append", help=only_help)
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("down", help="stop what `up` started (by pid)")
    p.add_argument("--only", action="append", help=only_help)
    p.set_defaults(func=_cmd_down)

    p = sub.add_parser("status", help="pid and health of each component")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("env", help='shell exports: eval "$(python -m devstack env)"')
    p.set_defaults(func=_cmd_env)

    p = sub.add_parser("logs", help="a pod's container logs, as written by the local kubelet")
    p.add_argument("pod", help="POD or NAMESPACE/POD")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-c", "--container")
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=_cmd_logs)

    p = sub.add_parser("build", help="only build (and cache) the binaries")
    p.add_argument("tools", nargs="*", metavar="TOOL", help=", ".join(build.ALL_TOOLS))
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("tool-path", help="print the cached binary's path")
    p.add_argument("tool", choices=build.ALL_TOOLS)
    p.add_argument("--build", action="store_true", help="build it first if missing")
    p.set_defaults(func=_cmd_tool_path)

    p = sub.add_parser("reset", help="down, then delete all state under .devstack/")
    p.set_defaults(func=_cmd_reset)

    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except (StackError, build.BuildError, KeyError) as exc:
        print(f"[devstack] error: {exc}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
