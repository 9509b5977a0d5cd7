"""Build the Go (and one C) binaries of the offline kind node, cached by version.

    python scripts/kind/gobuild.py TOOL...      # prints "<tool> <path>" per tool

Tools: kubelet, kubeadm, kube-proxy (k8s.io/kubernetes, the same pin and the same
staging-module replaces as devstack's control plane), coredns (github.com/coredns/coredns),
kind (sigs.k8s.io/kind), pause (kubernetes' build/pause/linux/pause.c, static, with gcc).
devstack's own tools (kube-apiserver, etcd, kubectl, helm...) are built by `devstack build`
and only looked up here. Binaries land in ``<cache>/<tool>-<version>/bin/<tool>`` like
devstack's, and share its Go module and build caches, so kubelet & co. compile mostly from
packages the apiserver build already compiled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from devstack import build, versions

KUBE_TOOLS = ("kubelet", "kubeadm", "kube-proxy")
# What kubeadm v1.37 pulls for CoreDNS and the sandbox, and the kind release whose node
# layout (images/base/files) the node image follows. Keep in step with scripts/kind/lib.sh.
COREDNS_VERSION = "v1.14.6"
PAUSE_VERSION = "3.10.2"
KIND_VERSION = "v0.33.0"
# The CoreDNS plugins a cluster's Corefile uses (kubeadm's, kind's, and the common
# additions), in the order of CoreDNS's core/dnsserver/zdirectives.go. Leaving out the
# cloud DNS back ends (AWS, Azure, Google), etcd, tracing, dnstap and the rest cuts the
# cold build: measured with warm modules and an empty build cache, 153 s for the whole
# CoreDNS against 105 s for this set, and far fewer modules to download.
COREDNS_PLUGINS = (
    "root", "metadata", "cancel", "timeouts", "reload", "bufsize", "bind", "debug",
    "ready", "health", "pprof", "prometheus", "errors", "log", "local", "any", "chaos",
    "loadbalance", "cache", "rewrite", "acl", "header", "minimal", "template", "hosts",
    "k8s_external", "kubernetes", "file", "auto", "loop", "forward", "whoami",
)  # fmt: skip


def _plugin_set_key() -> str:
    return hashlib.sha256(" ".join(COREDNS_PLUGINS).encode()).hexdigest()[:8]


VERSIONS = {
    **{t: versions.KUBERNETES_VERSION for t in KUBE_TOOLS},
    # The plugin set is part of CoreDNS's cache key: a changed set is a new binary.
    "coredns": f"{COREDNS_VERSION}-{_plugin_set_key()}",
    "kind": KIND_VERSION,
    "pause": PAUSE_VERSION,
}


def tool_path(tool: str) -> Path:
    if tool in build.ALL_TOOLS:
        return build.tool_path(tool)
    return build.cache_root() / f"{tool}-{VERSIONS[tool]}" / "bin" / tool


def _log(msg: str) -> None:
    print(f"[kind] {msg}", file=sys.stderr, flush=True)


def _run(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(args)}\n")
        fh.flush()
        # nice: the machine is shared with running test suites.
        rc = subprocess.call(["nice", "-n", "10", *args], cwd=cwd, env=env, stdout=fh, stderr=fh)
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise SystemExit(f"[kind] `{' '.join(args[:3])} ...` exited {rc}; log {log}:\n{tail}")


def _wrapper(workdir: Path, require: str, replaces: list[tuple[str, str]] | None = None) -> None:
    lines = ["module pushtask.local/kind/build", "", "go 1.26.0", "", f"require {require}"]
    if replaces:
        lines += ["", "replace (", *[f"\t{a} => {b}" for a, b in replaces], ")"]
    (workdir / "go.mod").write_text("\n".join(lines) + "\n")


def _go_build(
    go: str, workdir: Path, pkg: str, ldflags: str, out: Path, env: dict[str, str], log: Path
) -> None:
    tmp = out.with_name(out.name + ".partial")
    _run(
        [go, "build", "-trimpath", "-p", "2", f"-ldflags={ldflags}", "-o", str(tmp), pkg],
        workdir,
        env,
        log,
    )
    tmp.replace(out)  # atomic: a half-written binary never looks built


def _coredns_main() -> str:
    """CoreDNS's documented way to choose plugins at compile time: a main of our own."""
    # The `prometheus` directive is registered by the plugin package named `metrics`.
    pkgs = sorted("metrics" if p == "prometheus" else p for p in COREDNS_PLUGINS)
    imports = "\n".join(f'\t_ "github.com/coredns/coredns/plugin/{p}"' for p in pkgs)
    directives = ", ".join(f'"{p}"' for p in COREDNS_PLUGINS)
    return (
        "package main\n\nimport (\n"
        '\t"github.com/coredns/coredns/core/dnsserver"\n'
        '\t"github.com/coredns/coredns/coremain"\n\n'
        f"{imports}\n)\n\n"
        f"func init() {{ dnsserver.Directives = []string{{{directives}}} }}\n\n"
        "func main() { coremain.Run() }\n"
    )


def _build(tool: str, out: Path, workdir: Path, log: Path) -> None:
    env = build._GoEnv().env()
    if tool == "pause":
        go = build._go()
        info = subprocess.run(
            [go, "mod", "download", "-json", f"k8s.io/kubernetes@{versions.KUBERNETES_VERSION}"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        src = Path(json.loads(info.stdout)["Dir"]) / "build/pause/linux/pause.c"
        tmp = out.with_name("pause.partial")
        # The flags of kubernetes' build/pause/Makefile: small and static.
        _run(
            [
                "gcc",
                "-Os",
                "-Wall",
                "-Werror",
                "-static",
                f"-DVERSION=v{PAUSE_VERSION}-pushtask",
                "-o",
                str(tmp),
                str(src),
            ],
            workdir,
            env,
            log,
        )
        subprocess.run(["strip", str(tmp)], check=True)
        tmp.replace(out)
        return
    go = build._go()
    if tool in KUBE_TOOLS:
        kver, sver = versions.KUBERNETES_VERSION, versions.KUBERNETES_STAGING_VERSION
        info = subprocess.run(
            [go, "mod", "download", "-json", f"k8s.io/kubernetes@{kver}"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        gomod = Path(json.loads(info.stdout)["GoMod"]).read_text()
        staging = build.kubernetes_staging_modules(gomod)
        _wrapper(workdir, f"k8s.io/kubernetes {kver}", [(m, f"{m} {sver}") for m in staging])
        pkg = f"k8s.io/kubernetes/cmd/{tool}"
        _run([go, "get", f"{pkg}@{kver}"], workdir, env, log)
        _go_build(go, workdir, pkg, build._k8s_ldflags(), out, env, log)
    elif tool == "coredns":
        mod = "github.com/coredns/coredns"
        _wrapper(workdir, f"{mod} {COREDNS_VERSION}")
        (workdir / "main.go").write_text(_coredns_main())
        _run([go, "get", f"{mod}@{COREDNS_VERSION}"], workdir, env, log)
        _go_build(
            go, workdir, ".", f"-s -w -X {mod}/coremain.GitCommit={COREDNS_VERSION}", out, env, log
        )
    elif tool == "kind":
        mod = "sigs.k8s.io/kind"
        _wrapper(workdir, f"{mod} {KIND_VERSION}")
        _run([go, "get", f"{mod}@{KIND_VERSION}"], workdir, env, log)
        _go_build(go, workdir, mod, "-s -w", out, env, log)
    else:
        raise SystemExit(f"unknown tool {tool}")


def ensure(tool: str) -> Path:
    if tool in build.ALL_TOOLS:
        return build.ensure_tool(tool)
    out = tool_path(tool)
    if os.access(out, os.X_OK):
        return out
    with build._build_lock(tool):
        if os.access(out, os.X_OK):
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        key = "kind-kubernetes" if tool in KUBE_TOOLS else f"kind-{tool}"
        workdir = build.cache_root() / "build" / f"{key}-{VERSIONS[tool]}"
        workdir.mkdir(parents=True, exist_ok=True)
        log = build.cache_root() / "build" / "logs" / f"{tool}-{VERSIONS[tool]}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        _log(f"building {tool} {VERSIONS[tool]} from pinned sources (log: {log})")
        start = time.monotonic()
        _build(tool, out, workdir, log)
        _log(f"built {tool} {VERSIONS[tool]} in {time.monotonic() - start:.0f}s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tools", nargs="+")
    args = parser.parse_args()
    for tool in args.tools:
        print(tool, ensure(tool), flush=True)


if __name__ == "__main__":
    if not shutil.which("go"):
        raise SystemExit("[kind] Go is needed (devstack's builds need it too)")
    main()
