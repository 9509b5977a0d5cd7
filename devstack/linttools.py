"""Build the chart's independent checkers from pinned Go modules, cached like devstack's tools.

    python -m devstack.linttools [TOOL...]     # prints "<tool>\t<path>" per tool

- promtool: github.com/prometheus/prometheus/cmd/promtool (only that command; built with
  the ``remove_all_sd`` tag, which leaves out the cloud service discoveries promtool does
  not need to check and unit-test rules). Checks and unit-tests the chart's PrometheusRule.
- kube-score: github.com/zegl/kube-score/cmd/kube-score, the chart's independent linter.
  kube-linter (golang.stackrox.io/kube-linter) was the first choice, but the Go module
  proxy serves no version of that module (its vanity host is refused), and the GitHub path
  is not a module of its own; kube-score does the same kind of checks (probes, resources,
  security context, network policies, PodDisruptionBudgets...) and takes exceptions as a
  ``kube-score/ignore`` annotation beside the object.

Binaries land in ``<cache>/<tool>-<version>/bin/<tool>`` (cache: ``~/.cache/pushtask``) and
are rebuilt only when the pin below changes. Builds run under ``nice`` (a shared machine).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from devstack import build

# tool -> (module, version, package, build tags)
PINS: dict[str, tuple[str, str, str, str]] = {
    "promtool": (
        "github.com/prometheus/prometheus",
        "v0.316.0",  # Prometheus 3.16
        "github.com/prometheus/prometheus/cmd/promtool",
        "remove_all_sd",
    ),
    "kube-score": (
        "github.com/zegl/kube-score",
        "v1.20.0",
        "github.com/zegl/kube-score/cmd/kube-score",
        "",
    ),
}
TOOLS = tuple(PINS)


def tool_path(tool: str) -> Path:
    _module, version, _pkg, _tags = PINS[tool]
    return build.cache_root() / f"{tool}-{version}" / "bin" / tool


def is_built(tool: str) -> bool:
    path = tool_path(tool)
    return path.is_file() and path.stat().st_mode & 0o111 != 0


def _run(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(args)}\n")
        fh.flush()
        rc = subprocess.call(["nice", "-n", "10", *args], cwd=cwd, env=env, stdout=fh, stderr=fh)
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise build.BuildError(f"`{' '.join(args[:3])} ...` exited {rc}; log {log}:\n{tail}")


def ensure(tool: str) -> Path:
    """The path of ``tool``'s binary, built first when the pinned version is not cached."""
    path = tool_path(tool)
    if is_built(tool):
        return path
    module, version, pkg, tags = PINS[tool]
    go = build._go()
    with build._build_lock(tool):
        if is_built(tool):
            return path
        workdir = build.cache_root() / "build" / f"{tool}-{version}"
        workdir.mkdir(parents=True, exist_ok=True)
        log = build.cache_root() / "build" / "logs" / f"{tool}-{version}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        print(f"[linttools] building {tool} {version} (first time; log: {log})", file=sys.stderr)
        start = time.monotonic()
        env = build._GoEnv().env()
        build._write_wrapper_module(workdir, tool, f"{module} {version}")
        _run([go, "get", f"{pkg}@{version}"], workdir, env, log)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        args = [go, "build", "-trimpath", "-p", "2", "-ldflags=-s -w", "-o", str(tmp)]
        if tags:
            args.append(f"-tags={tags}")
        _run([*args, pkg], workdir, env, log)
        tmp.replace(path)  # atomic: a half-written binary never looks built
        took = time.monotonic() - start
        print(f"[linttools] built {tool} {version} in {took:.0f}s -> {path}", file=sys.stderr)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.linttools", description=__doc__)
    parser.add_argument("tools", nargs="*", metavar="TOOL", help=", ".join(TOOLS))
    args = parser.parse_args(argv)
    unknown = set(args.tools) - set(TOOLS)
    if unknown:
        parser.error(f"unknown tool(s) {', '.join(sorted(unknown))}; known: {', '.join(TOOLS)}")
    try:
        for tool in args.tools or TOOLS:
            print(f"{tool}\t{ensure(tool)}")
    except build.BuildError as exc:
        print(f"[linttools] {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
