"""Headless Chromium from Debian's packages, driven by Playwright (no browser download:
scripts/bootstrap.sh installs `chromium`; Playwright's PyPI wheel brings only its driver).

The flags keep Chromium from calling home: this machine's closed network refuses every
connection but the local ones, and a test must not wait on them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1200, "height": 800}


def chromium_path() -> Path:
    found = CHROMIUM if CHROMIUM.exists() else Path(shutil.which("chromium") or CHROMIUM)
    if not found.exists():
        pytest.fail("no /usr/bin/chromium: run scripts/bootstrap.sh (installs Debian's chromium)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module; pages are cheap, the browser is not."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=str(chromium_path()), args=ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def web_page(browser: Any) -> Iterator[Any]:
    """A fresh page (own cookies and storage) that fails the test on a page error or a
    Content-Security-Policy violation reported to the console."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"console: {msg.text}")
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None
        ),
    )
    page.set_default_timeout(20_000)
    try:
        yield page
    finally:
        context.close()
    assert not problems, problems
