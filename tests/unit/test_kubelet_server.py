"""The kubelet's log endpoint helpers: tail, and following a file across rotation."""

from __future__ import annotations

from pathlib import Path

from devstack.kubelet.server import read_from, self_signed, tail


def test_tail() -> None:
    data = b"a\nb\nc\n"
    assert tail(data, -1) == data
    assert tail(data, 2) == b"b\nc\n"
    assert tail(data, 0) == b""
    assert tail(b"a\nb", 1) == b"b"


def test_read_from_follows_appends_and_rotation(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    assert read_from(log, 0) == (b"", 0)
    log.write_bytes(b"one\n")
    chunk, offset = read_from(log, 0)
    assert (chunk, offset) == (b"one\n", 4)
    with log.open("ab") as fh:
        fh.write(b"two\n")
    assert read_from(log, offset) == (b"two\n", 8)
    log.write_bytes(b"x\n")  # a restart rotated the file: start over
    assert read_from(log, 8) == (b"x\n", 2)


def test_self_signed_is_made_once(tmp_path: Path) -> None:
    cert, key = tmp_path / "k.crt", tmp_path / "k.key"
    self_signed(cert, key, "127.0.0.1", "devstack")
    first = cert.read_bytes()
    self_signed(cert, key, "127.0.0.1", "devstack")
    assert cert.read_bytes() == first and key.stat().st_mode & 0o777 == 0o600
