"""Build tools/kstatus (kstatus' and Flux's own Go code judging a resource) into the cache.

    python -m devstack.kstatus      # prints the binary's path, building it first if needed

The program is a small Go module kept in the repo (tools/kstatus: main.go, flux.go, go.mod
pinning sigs.k8s.io/cli-utils and github.com/fluxcd/pkg/runtime, go.sum); its
dependencies come from the Go module proxy and the checksums in go.sum are enforced
(``-mod=readonly``). The binary lands in
``<cache>/kstatus-<cli-utils version>-<hash of the module's files>/bin/kstatus`` (cache:
``~/.cache/pushtask``), so it is rebuilt only when the pin or the program changes.
tests/e2e/test_gitops_e2e.py runs it on real PushTasks.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

from devstack import build

SOURCE = Path(__file__).resolve().parents[1] / "tools" / "kstatus"
MODULE = "sigs.k8s.io/cli-utils"


def pinned_version() -> str:
    """The cli-utils version tools/kstatus/go.mod requires."""
    found = re.search(rf"^\s*(?:require\s+)?{re.escape(MODULE)}\s+(v\S+)", _gomod(), re.M)
    if found is None:
        raise build.BuildError(f"{SOURCE / 'go.mod'} does not require {MODULE}")
    return found.group(1)


def _gomod() -> str:
    return (SOURCE / "go.mod").read_text()


def cache_key() -> str:
    digest = hashlib.sha256()
    for path in sorted([*SOURCE.glob("*.go"), SOURCE / "go.mod", SOURCE / "go.sum"]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{pinned_version()}-{digest.hexdigest()[:10]}"


def tool_path() -> Path:
    return build.cache_root() / f"kstatus-{cache_key()}" / "bin" / "kstatus"


def ensure() -> Path:
    """The path of the kstatus binary, built first when this pin is not cached."""
    path = tool_path()
    if path.is_file():
        return path
    go = build._go()
    with build._build_lock("kstatus"):
        if path.is_file():  # built by someone else while we waited for the lock
            return path
        log = build.cache_root() / "build" / "logs" / f"kstatus-{cache_key()}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"[kstatus] building {MODULE} {pinned_version()} (log: {log})", file=sys.stderr)
        start = time.monotonic()
        env = build._GoEnv().env()
        env["GOFLAGS"] = "-mod=readonly -buildvcs=false"  # go.sum is the pin: never rewrite it
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        args = ["nice", "-n", "10", go, "build", "-trimpath", "-p", "2", "-ldflags=-s -w"]
        with log.open("w") as fh:
            rc = subprocess.call(
                [*args, "-o", str(tmp), "."], cwd=SOURCE, env=env, stdout=fh, stderr=fh
            )
        if rc != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise build.BuildError(f"building tools/kstatus failed ({rc}); log {log}:\n{tail}")
        tmp.replace(path)  # atomic: a half-written binary never looks built
        took = time.monotonic() - start
        print(f"[kstatus] built in {took:.0f}s -> {path}", file=sys.stderr)
    return path


def main() -> int:
    try:
        print(ensure())
    except build.BuildError as exc:
        print(f"[kstatus] {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
