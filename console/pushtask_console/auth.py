"""The bearer token every action needs (and every read, when the release says so).

The token comes from a Secret (env or file); the comparison is constant-time. A console
started without a token refuses every action: an open write endpoint is never a default.
"""

from __future__ import annotations

import hmac


class Auth:
    def __init__(self, token: str | None, reads_need_token: bool = False) -> None:
        self._token = (token or "").strip().encode()
        self.reads_need_token = reads_need_token

    @property
    def configured(self) -> bool:
        return bool(self._token)

    def check(self, header: str | None) -> str | None:
        """None when `header` (an Authorization header) carries the token, else why not."""
        if not self._token:
            return "this console has no token configured: actions are disabled"
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return "a bearer token is required for this (enter it at the top of the page)"
        if not hmac.compare_digest(given.strip().encode(), self._token):
            return "the token is not valid"
        return None

    def check_read(self, header: str | None) -> str | None:
        return self.check(header) if self.reads_need_token else None
