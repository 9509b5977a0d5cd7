"""Pod IPs: unique while in use, not handed out again at once, kept across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.kubelet.ipam import IPAM, PoolExhausted


def test_allocate_is_stable_per_pod_and_persisted(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    ipam = IPAM(path)
    a = ipam.allocate("uid-a", "ns/a")
    b = ipam.allocate("uid-b", "ns/b")
    assert a != b and a.startswith("127.10.") and b.startswith("127.10.")
    assert ipam.allocate("uid-a") == a
    again = IPAM(path)  # a restarted kubelet
    assert again.get("uid-a") == a and again.get("uid-b") == b
    c = again.allocate("uid-c")
    assert c not in (a, b)


def test_freed_address_is_not_reused_at_once(tmp_path: Path) -> None:
    ipam = IPAM(tmp_path / "ipam.json")
    a = ipam.allocate("uid-a")
    ipam.release("uid-a")
    assert ipam.allocate("uid-b") != a


def test_skips_zero_and_broadcast_like_octets_and_exhausts(tmp_path: Path) -> None:
    ipam = IPAM(None, "127.20.0.0/30")  # .0 network, .3 broadcast: two usable
    got = {ipam.allocate("a"), ipam.allocate("b")}
    assert got == {"127.20.0.1", "127.20.0.2"}
    with pytest.raises(PoolExhausted):
        ipam.allocate("c")
    ipam.release("a")
    assert ipam.allocate("c") == "127.20.0.1"
    wide = IPAM(None, "127.30.0.0/16")
    addresses = [wide.allocate(str(i)) for i in range(600)]
    assert not any(ip.endswith((".0", ".255")) for ip in addresses)
    assert len(set(addresses)) == 600


def test_prefers_the_address_the_pod_already_has(tmp_path: Path) -> None:
    ipam = IPAM(None)
    assert ipam.allocate("x", prefer="127.10.3.4") == "127.10.3.4"
    assert ipam.allocate("y", prefer="127.10.3.4") != "127.10.3.4"  # taken
    assert ipam.allocate("z", prefer="10.0.0.1").startswith("127.10.")  # outside the block


def test_rejects_a_block_outside_loopback() -> None:
    with pytest.raises(ValueError):
        IPAM(None, "10.0.0.0/24")
