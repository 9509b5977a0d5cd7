"""TLS trust shared by the worker's channels and the operator's notifications."""

from __future__ import annotations

import ssl

import certifi


def ssl_context(ca_pem: str | None) -> ssl.SSLContext:
    """The system's trust (certifi's bundle) plus `ca_pem`, CA certificates in PEM a
    Secret gave (a private gateway, the tests' local servers)."""
    ctx = ssl.create_default_context(cafile=certifi.where())
    if ca_pem:
        ctx.load_verify_locations(cadata=ca_pem)
    return ctx
