"""Build the stack's binaries from pinned Go modules and cache them by version.

Every tool lands in ``<cache>/<tool>-<version>/bin/<tool>`` (cache defaults to
``~/.cache/pushtask``). A tool whose binary is already there is never rebuilt, so only the
first ``up`` on a machine pays the build (minutes on 2 cores); later ones take seconds.

Sources come only from the Go module proxy:
- kube-apiserver, kube-controller-manager, kube-scheduler, kubectl: k8s.io/kubernetes,
  consumed as a module. Its go.mod points every k8s.io/* staging module at
  ``./staging/...``, which does not exist in the module zip, so the wrapper module replaces
  each of them with its published v0.x release (the list is read from that go.mod).
- etcd: go.etcd.io/etcd/server/v3 (its root package is the etcd main).
- helm: helm.sh/helm/v3/cmd/helm.
- mongo-java-server: its jars from Maven Central (``mvn dependency:copy-dependencies`` with a
  local repository under the cache), devstack/mongo_java/MongoWireServer.java compiled with
  the machine's javac, and a small launcher script as the "binary".
- ferretdb: FerretDB panics at start unless build/version/version.txt is filled in (its
  release pipeline writes it), so it is built from a writable copy of the module source
  with that one file written; nothing else is changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from devstack import versions

KUBERNETES_TOOLS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ALL_TOOLS = ("etcd", *KUBERNETES_TOOLS, "helm", "ferretdb", "mongo-java-server")
MONGO_JAVA_DIR = Path(__file__).resolve().parent / "mongo_java"


class BuildError(RuntimeError):
    """A tool could not be built; the message names the tool and points at its log."""


def cache_root() -> Path:
    return Path(os.environ.get("PUSHTASK_CACHE_DIR", Path.home() / ".cache" / "pushtask"))


def tool_version(tool: str) -> str:
    if tool in KUBERNETES_TOOLS:
        return versions.KUBERNETES_VERSION
    return {
        "etcd": versions.ETCD_VERSION,
        "helm": versions.HELM_VERSION,
        "ferretdb": versions.FERRETDB_VERSION,
        # The server's own main class is part of the build: a change to it is a new build.
        "mongo-java-server": f"{versions.MONGO_JAVA_SERVER_VERSION}-{_source_key(MONGO_JAVA_DIR)}",
    }[tool]


def _source_key(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:8]


def tool_path(tool: str) -> Path:
    """Where the cached binary of ``tool`` lives (it may not be built yet)."""
    if tool not in ALL_TOOLS:
        raise KeyError(f"unknown tool {tool!r}; known: {', '.join(ALL_TOOLS)}")
    return cache_root() / f"{tool}-{tool_version(tool)}" / "bin" / tool


def is_built(tool: str) -> bool:
    return os.access(tool_path(tool), os.X_OK)


def _log(msg: str) -> None:
    print(f"[devstack] {msg}", file=sys.stderr, flush=True)


@dataclass
class _GoEnv:
    """The environment every build runs with."""

    extra: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                # Never let `go` fetch another toolchain: only the module proxy is reachable.
                "GOTOOLCHAIN": "local",
                # Static binaries; none of these tools needs cgo (SQLite is pure Go).
                "CGO_ENABLED": "0",
                "GOFLAGS": "-mod=mod -buildvcs=false",
            }
        )
        env.update(self.extra)
        return env


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            f"`go` is not on PATH: Go >= {versions.GO_MIN_VERSION} is needed to build the "
            "devstack tools (apt-get install golang-go, or the toolchain from go.dev)"
        )
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True)
    have = out.stdout.strip().removeprefix("go")
    if _version_tuple(have) < _version_tuple(versions.GO_MIN_VERSION):
        raise BuildError(f"Go {have} is too old: Go >= {versions.GO_MIN_VERSION} is needed")
    return go


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


def _run_logged(tool: str, args: Sequence[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    """Run one build step, appending its output to ``log``; print a heartbeat meanwhile."""
    start = time.monotonic()
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        done = threading.Event()

        def heartbeat() -> None:
            # A silent multi-minute compile looks hung; say it is still going.
            while not done.wait(30):
                _log(f"  ... still building {tool} ({time.monotonic() - start:.0f}s)")

        t = threading.Thread(target=heartbeat, daemon=True)
        t.start()
        try:
            rc = proc.wait()
        finally:
            done.set()
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise BuildError(
            f"building {tool} {tool_version(tool)} failed: `{' '.join(args[:3])} ...` exited "
            f"{rc}\n--- last lines of {log} ---\n" + "\n".join(tail)
        )


def _mod_download(go: str, module: str, env: dict[str, str], cwd: Path) -> dict[str, str]:
    out = subprocess.run(
        [go, "mod", "download", "-json", module],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    info: dict[str, str] = json.loads(out.stdout) if out.stdout.strip() else {}
    if out.returncode != 0 or "Error" in info:
        raise BuildError(f"cannot download {module}: {info.get('Error') or out.stderr.strip()}")
    return info


def kubernetes_staging_modules(kubernetes_go_mod: str) -> list[str]:
    """The k8s.io/* modules that k8s.io/kubernetes' go.mod replaces with ./staging paths."""
    return sorted(
        set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", kubernetes_go_mod, re.M))
    )


def _write_wrapper_module(
    workdir: Path, name: str, require: str, replaces: Sequence[tuple[str, str]] = ()
) -> None:
    lines = [f"module pushtask.local/devstack/{name}", "", "go 1.26.0", ""]
    lines.append(f"require {require}")
    if replaces:
        lines += ["", "replace ("]
        lines += [f"\t{old} => {new}" for old, new in replaces]
        lines.append(")")
    (workdir / "go.mod").write_text("\n".join(lines) + "\n")


def _k8s_ldflags() -> str:
    # What kubernetes' hack/lib/version.sh stamps: without it the binaries report
    # v0.0.0-master, which kubectl and helm show and warn about as version skew.
    major, minor = versions.KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={versions.KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def _build_go(
    tool: str, go: str, workdir: Path, package: str, ldflags: str, log: Path, env: dict[str, str]
) -> None:
    out = tool_path(tool)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    args = [go, "build", "-trimpath", "-p", "2", f"-ldflags={ldflags}", "-o", str(tmp), package]
    _run_logged(tool, args, workdir, env, log)
    tmp.replace(out)  # atomic: a half-written binary never looks "built"


def _recipe_kubernetes(tool: str, go: str, workdir: Path, log: Path, env: dict[str, str]) -> None:
    kver, sver = versions.KUBERNETES_VERSION, versions.KUBERNETES_STAGING_VERSION
    info = _mod_download(go, f"k8s.io/kubernetes@{kver}", env, workdir)
    staging = kubernetes_staging_modules(Path(info["GoMod"]).read_text())
    if not staging:
        raise BuildError(f"found no staging replaces in {info['GoMod']}")
    _write_wrapper_module(
        workdir, "kubernetes", f"k8s.io/kubernetes {kver}", [(m, f"{m} {sver}") for m in staging]
    )
    pkg = f"k8s.io/kubernetes/cmd/{tool}"
    _run_logged(tool, [go, "get", f"{pkg}@{kver}"], workdir, env, log)
    _build_go(tool, go, workdir, pkg, _k8s_ldflags(), log, env)


def _recipe_etcd(tool: str, go: str, workdir: Path, log: Path, env: dict[str, str]) -> None:
    pkg = "go.etcd.io/etcd/server/v3"
    _write_wrapper_module(workdir, "etcd", f"{pkg} {versions.ETCD_VERSION}")
    _run_logged(tool, [go, "get", f"{pkg}@{versions.ETCD_VERSION}"], workdir, env, log)
    _build_go(tool, go, workdir, pkg, "-s -w", log, env)


def _recipe_helm(tool: str, go: str, workdir: Path, log: Path, env: dict[str, str]) -> None:
    mod, ver = versions.HELM_MODULE, versions.HELM_VERSION
    pkg = f"{mod}/cmd/helm"
    _write_wrapper_module(workdir, "helm", f"{mod} {ver}")
    _run_logged(tool, [go, "get", f"{pkg}@{ver}"], workdir, env, log)
    ldflags = f"-s -w -X {mod}/internal/version.version={ver}"
    _build_go(tool, go, workdir, pkg, ldflags, log, env)


def _recipe_ferretdb(tool: str, go: str, workdir: Path, log: Path, env: dict[str, str]) -> None:
    ver = versions.FERRETDB_VERSION
    info = _mod_download(go, f"github.com/FerretDB/FerretDB@{ver}", env, workdir)
    src = workdir / "src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(info["Dir"], src)
    for p in [src, *src.rglob("*")]:  # the module cache is read-only
        p.chmod(p.stat().st_mode | 0o200)
    (src / "build" / "version" / "version.txt").write_text(ver + "\n")
    _build_go(tool, go, src, "./cmd/ferretdb", "-s -w", log, env)


def _recipe_mongo_java_server(
    tool: str, go: str, workdir: Path, log: Path, env: dict[str, str]
) -> None:
    home = tool_path(tool).parent.parent
    lib, classes = home / "lib", home / "classes"
    for d in (lib, classes):
        shutil.rmtree(d, ignore_errors=True)
    mvn = shutil.which("mvn")
    javac = shutil.which("javac")
    if not mvn or not javac:
        raise BuildError(f"{tool}: needs mvn and javac on PATH (Debian: maven, default-jdk)")
    _run_logged(
        tool,
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(MONGO_JAVA_DIR / "pom.xml"),
            f"-Dmaven.repo.local={cache_root() / 'm2'}",
            f"-Dmongo-java-server.version={versions.MONGO_JAVA_SERVER_VERSION}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={lib}",
        ],
        workdir,
        env,
        log,
    )
    source = MONGO_JAVA_DIR / "MongoWireServer.java"
    _run_logged(
        tool, [javac, "-cp", f"{lib}/*", "-d", str(classes), str(source)], workdir, env, log
    )
    launcher = tool_path(tool)
    launcher.parent.mkdir(parents=True, exist_ok=True)
    tmp = launcher.with_name(launcher.name + ".partial")
    # exec: the recorded pid is the JVM itself, so `down` signals the server directly.
    tmp.write_text(
        "#!/bin/sh\n"
        f'exec java -XX:+UseSerialGC -Xss512k -cp "{classes}:{lib}/*" MongoWireServer "$@"\n'
    )
    tmp.chmod(0o755)
    tmp.replace(launcher)


_RECIPES: dict[str, Callable[[str, str, Path, Path, dict[str, str]], None]] = {
    **{t: _recipe_kubernetes for t in KUBERNETES_TOOLS},
    "etcd": _recipe_etcd,
    "helm": _recipe_helm,
    "ferretdb": _recipe_ferretdb,
    "mongo-java-server": _recipe_mongo_java_server,
}


@contextmanager
def _build_lock(tool: str) -> Iterator[None]:
    # Two `up`s at once (two terminals, a test run) must not build into the same dir.
    lock = cache_root() / "build" / f"{tool}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_tool(tool: str) -> Path:
    """Return the path of ``tool``'s binary, building it first if it is not cached."""
    path = tool_path(tool)
    if is_built(tool):
        return path
    go = _go()
    with _build_lock(tool):
        if is_built(tool):  # built by someone else while we waited for the lock
            return path
        version = tool_version(tool)
        # The kubernetes tools share one wrapper module (and its go.sum).
        key = "kubernetes" if tool in KUBERNETES_TOOLS else tool
        workdir = cache_root() / "build" / f"{key}-{version}"
        workdir.mkdir(parents=True, exist_ok=True)
        log = cache_root() / "build" / "logs" / f"{tool}-{version}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        _log(f"building {tool} {version} from pinned sources (first time only; log: {log})")
        start = time.monotonic()
        _RECIPES[tool](tool, go, workdir, log, _GoEnv().env())
        _log(f"built {tool} {version} in {time.monotonic() - start:.0f}s -> {path}")
    return path


def ensure_tools(tools: Sequence[str]) -> dict[str, Path]:
    """Build the missing ones among ``tools``, one after the other (2 cores: no parallelism)."""
    return {t: ensure_tool(t) for t in tools}
