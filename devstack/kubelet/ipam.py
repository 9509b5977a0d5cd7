"""Pod IPs: one loopback address per pod, persisted so a restarted kubelet keeps them."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any


class PoolExhausted(RuntimeError):
    pass


class IPAM:
    """Allocates addresses from a block of 127.0.0.0/8 (Linux routes all of it to lo).

    Allocation walks on from the last address handed out, so a freed address is not handed
    out again at once: a client still talking to a deleted pod's IP fails instead of
    reaching its successor.
    """

    def __init__(self, path: Path | None, network: str = "127.10.0.0/16") -> None:
        self.path = path
        self.network = ipaddress.ip_network(network)
        if not self.network.subnet_of(ipaddress.ip_network("127.0.0.0/8")):  # type: ignore[arg-type]
            raise ValueError(f"{network} is not inside the loopback range 127.0.0.0/8")
        self._by_uid: dict[str, dict[str, str]] = {}
        self._last = int(self.network.network_address)
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        data: dict[str, Any] = json.loads(path.read_text() or "{}")
        self._by_uid = dict(data.get("allocations", {}))
        last = data.get("last")
        if last and ipaddress.ip_address(last) in self.network:
            self._last = int(ipaddress.ip_address(last))

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"last": str(ipaddress.ip_address(self._last)), "allocations": self._by_uid},
                indent=1,
                sort_keys=True,
            )
        )
        os.replace(tmp, self.path)  # atomic: a crash never leaves half a file

    def _usable(self, value: int) -> bool:
        # Skip the block's own network/broadcast and any .0/.255 octet: legal on lo, but
        # they look like mistakes in a status or a log line.
        last_octet = value & 0xFF
        return (
            value != int(self.network.network_address)
            and value != int(self.network.broadcast_address)
            and last_octet not in (0, 255)
        )

    def allocate(self, uid: str, owner: str = "", prefer: str | None = None) -> str:
        """The pod's address: the one it already has, else ``prefer`` (the podIP its status
        already shows) if free, else the next free one."""
        if uid in self._by_uid:
            return self._by_uid[uid]["ip"]
        used = {int(ipaddress.ip_address(a["ip"])) for a in self._by_uid.values()}
        if prefer:
            wanted = ipaddress.ip_address(prefer)
            if wanted in self.network and int(wanted) not in used:
                self._by_uid[uid] = {"ip": prefer, "owner": owner}
                self._save()
                return prefer
        first = int(self.network.network_address)
        size = self.network.num_addresses
        for step in range(1, size + 1):
            value = first + (self._last - first + step) % size
            if self._usable(value) and value not in used:
                self._last = value
                ip = str(ipaddress.ip_address(value))
                self._by_uid[uid] = {"ip": ip, "owner": owner}
                self._save()
                return ip
        raise PoolExhausted(f"no free address left in {self.network}")

    def release(self, uid: str) -> None:
        if self._by_uid.pop(uid, None) is not None:
            self._save()

    def get(self, uid: str) -> str | None:
        entry = self._by_uid.get(uid)
        return entry["ip"] if entry else None

    def allocations(self) -> dict[str, str]:
        return {uid: a["ip"] for uid, a in self._by_uid.items()}
