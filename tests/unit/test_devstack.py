"""devstack's own machinery: certificates, pid-tracked processes, module wiring."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devstack import build, pki, process, stack


def _subject(cert: x509.Certificate) -> tuple[str, list[str]]:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return str(cn), [str(o) for o in orgs]


def test_pki_identities_are_signed_by_the_ca(tmp_path: Path) -> None:
    k = pki.ensure_pki(tmp_path / "pki")
    ca = x509.load_pem_x509_certificate(k.ca_cert.read_bytes())
    expected = {
        "admin": ("devstack-admin", ["system:masters"]),
        "kubelet": ("system:node:devstack", ["system:nodes"]),
        "controller-manager": ("system:kube-controller-manager", []),
        "scheduler": ("system:kube-scheduler", []),
    }
    for ident in (pki.ADMIN, pki.kubelet_identity(), pki.CONTROLLER_MANAGER, pki.SCHEDULER):
        cert = x509.load_pem_x509_certificate(k.client_cert(ident).read_bytes())
        cert.verify_directly_issued_by(ca)  # raises if not signed by our CA
        assert _subject(cert) == expected[ident.stem]
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert k.client_key(ident).stat().st_mode & 0o777 == 0o600

    serving = x509.load_pem_x509_certificate(k.serving_cert.read_bytes())
    serving.verify_directly_issued_by(ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "10.96.0.1",
    }


def test_pki_is_kept_across_calls(tmp_path: Path) -> None:
    first = pki.ensure_pki(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    pki.ensure_pki(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # A missing leaf is re-issued alone, by the same CA.
    first.client_cert(pki.ADMIN).unlink()
    pki.ensure_pki(tmp_path)
    assert first.ca_cert.read_bytes() == before["ca.crt"]
    assert first.client_cert(pki.ADMIN).read_bytes() != before["admin.crt"]


def test_kubeconfig_embeds_the_identity(tmp_path: Path) -> None:
    k = pki.ensure_pki(tmp_path / "pki")
    path = pki.write_kubeconfig(
        k, pki.kubelet_identity(), tmp_path / "k.kubeconfig", "https://127.0.0.1:6443"
    )
    config = yaml.safe_load(path.read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    user = config["users"][0]["user"]
    assert set(user) == {"client-certificate-data", "client-key-data"}
    assert path.stat().st_mode & 0o777 == 0o600


def test_staging_modules_are_read_from_the_kubernetes_go_mod() -> None:
    go_mod = """module k8s.io/kubernetes

require (
\tk8s.io/api v0.0.0
\tk8s.io/utils v0.0.0-2026
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/kube-openapi => k8s.io/kube-openapi v0.0.1
)
"""
    assert build.kubernetes_staging_modules(go_mod) == ["k8s.io/api", "k8s.io/client-go"]


def test_tool_paths_are_keyed_by_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PUSHTASK_CACHE_DIR", str(tmp_path))
    assert build.tool_path("kubectl") == tmp_path / "kubectl-v1.37.2" / "bin" / "kubectl"
    assert build.tool_path("ferretdb") == tmp_path / "ferretdb-v1.24.1" / "bin" / "ferretdb"
    with pytest.raises(KeyError):
        build.tool_path("docker")


def test_resolve_expands_groups_in_start_order() -> None:
    assert stack.resolve(["ferretdb"]) == ["ferretdb"]
    assert "ferretdb" in stack.resolve(["mongo"])
    assert stack.resolve(["kubelet,etcd"]) == ["etcd", "kubelet"]
    assert stack.resolve(None) == list(stack.ORDER)
    with pytest.raises(stack.StackError, match="unknown component 'mysql'"):
        stack.resolve(["mysql"])


# A parent that ignores SIGTERM and has a child that ignores it too: only SIGKILL works.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); "
    "time.sleep(300)"], stdout=subprocess.PIPE)
child.stdout.readline()
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(300)
"""


def test_stop_kills_a_stubborn_process_and_its_children(tmp_path: Path) -> None:
    child_file = tmp_path / "child.pid"
    rec = process.spawn(
        "stubborn",
        [sys.executable, "-c", STUBBORN, str(child_file)],
        log=tmp_path / "stubborn.log",
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 20
    while not child_file.exists() or not child_file.read_text():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    child = int(child_file.read_text())
    child_start = process.start_time(child)
    assert rec.alive() and child_start is not None

    pids = process.PidDir(tmp_path / "run")
    pids.write(rec)
    assert pids.live("stubborn") == rec

    assert process.stop(rec, grace=1.0) is True  # had to SIGKILL
    assert not rec.alive()
    # Gone (a zombie until init reaps it, which is not instant; or the pid was reused).
    deadline = time.monotonic() + 5
    while process.start_time(child) == child_start and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.start_time(child) != child_start
    assert pids.live("stubborn") is None


def test_a_recycled_pid_is_not_ours() -> None:
    real = process.start_time(os.getpid())
    assert real is not None
    me = process.ProcRecord("x", os.getpid(), real + 1, [], "cli")
    assert not me.alive()  # same pid, other start time
    assert process.stop(me) is False  # and never signalled
