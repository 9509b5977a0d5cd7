"""A server process says it is listening by writing a file another process waits for."""

from __future__ import annotations

import os
from pathlib import Path


def announce(path: str | Path, text: str) -> None:
    """Write `text` to `path` in one step (a temporary file renamed over it): a reader that
    polls for the file never sees it empty or half written."""
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(text)
    os.replace(partial, target)
