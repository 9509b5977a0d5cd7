"""The web console in a real browser (Debian's headless Chromium driven by Playwright)
against devstack: the chart installed with `console.enabled=true`, the console running as
a pod with its own ServiceAccount (RBAC exercised), a webhook sink in this process.

One test walks the whole page, as a person would, because the install is the slow part:
create from the form, a progress bar moving to Finished without a reload, pause and
resume with the buttons, the recipient lookup, "Send a test", errors beside the field,
actions refused without the token, and data holding <script> shown as text. It writes
the screenshots in docs/.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.release import QualifiedEnv, on_devstack, ready_pod_ip, release
from tests.e2e.test_operator_e2e import (
    ROOT,
    database_uri,
    push_task,
    users,
    wait_for,
)
from tests.support.browser import browser, web_page  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TOKEN = "console-e2e-token"
PORT = 8080
# The screenshots docs/console.md shows are refreshed by `make screenshots`; an ordinary
# test run leaves the tree as it found it.
SHOTS = Path(os.environ.get("PUSHTASK_SCREENSHOTS", "") or ROOT / "build" / "screenshots")
EVIL_USER = "<script>window.__pwned = 1</script>"
EVIL_BODY = "<script>window.__pwned = 2</script> Hi {{ user }}"


def console_url(env: QualifiedEnv) -> str:
    return f"http://{ready_pod_ip(env, 'pushtask-console')}:{PORT}/"


def assert_each_once(env: QualifiedEnv, audience: list[str]) -> None:
    """Every user of `audience` delivered exactly once (the sink also holds other tasks')."""
    wanted = set(audience)
    got = Counter(u for u in env.delivered().elements() if u in wanted)
    assert set(got) == wanted, f"{len(wanted - set(got))} never delivered"
    assert max(got.values()) == 1, [u for u, n in got.items() if n > 1][:10]


def set_token(page: Any, token: str) -> None:
    page.fill("#token", token)
    page.dispatch_event("#token", "change")


def create_from_form(page: Any, manifest: dict[str, Any]) -> None:
    page.fill("#manifest", yaml.safe_dump(manifest, sort_keys=False))
    page.click("#create")
    page.wait_for_selector("#create-message.ok")
    assert "created" in page.inner_text("#create-message")


def row(env: QualifiedEnv, name: str) -> str:
    return f'tr[data-task="{env.namespace}/{name}"]'


def progress(page: Any, selector: str) -> tuple[float, float]:
    value, top = page.eval_on_selector(selector, "p => [p.value, p.max]")
    return float(value), float(top)


@pytest.fixture
def console_env(
    kubectl: Any, helm: Any, namespace: str, mongo_uri: str, pushtask_crd: None
) -> Iterator[QualifiedEnv]:
    on_devstack()
    k = kubectl.in_namespace(namespace)
    # The token Secret first: the console pod reads it through a secretKeyRef at start.
    k("create", "secret", "generic", "console-token", f"--from-literal=token={TOKEN}")
    db_uri = database_uri(mongo_uri, f"e2e_{namespace.replace('-', '_')}"[:60])
    with release(
        kubectl, helm, namespace, db_uri,
        "console.enabled=true", "console.tokenSecret.name=console-token",
        f"console.port={PORT}",
    ) as env:  # fmt: skip
        yield env


def test_the_console_in_a_browser(console_env: QualifiedEnv, web_page: Any) -> None:  # noqa: F811
    env, page = console_env, web_page
    SHOTS.mkdir(parents=True, exist_ok=True)
    url = console_url(env)
    page.goto(url)
    page.wait_for_selector("#live-state:text-is('live')")
    # A reload would lose this: the page must follow the run by itself.
    page.evaluate("window.__sameDocument = 'yes'")

    # -- without the token, the form is refused and nothing is created -------------------
    fast_audience = users(400, "f")
    fast = push_task("fast", env.sink.url, fast_audience, workers=2, rate=50)
    page.fill("#manifest", yaml.safe_dump(fast, sort_keys=False))
    page.click("#create")
    page.wait_for_selector("#create-message.error")
    assert "token" in page.inner_text("#create-message")
    assert env.kubectl("get", "pushtasks.pushtask.dev", "fast", check=False).returncode != 0

    # -- create from the form; the bar moves to Finished without a reload ----------------
    set_token(page, TOKEN)
    create_from_form(page, fast)
    page.wait_for_selector(row(env, "fast"))
    seen: set[tuple[float, float]] = set()

    def finished() -> bool:
        seen.add(progress(page, row(env, "fast") + " progress"))
        return page.inner_text(row(env, "fast") + " .phase") == "Finished"

    wait_for("the fast task Finished on the page", finished, 180, every=0.25)
    assert any(0 < v < top for v, top in seen), f"the bar never stood between: {sorted(seen)}"
    assert progress(page, row(env, "fast") + " progress") == (400.0, 400.0)
    assert page.evaluate("window.__sameDocument") == "yes"
    assert_each_once(env, fast_audience)

    # -- a bad manifest: each error beside its field -------------------------------------
    bad = push_task("bad", env.sink.url, ["a"], workers=0)
    page.fill("#manifest", yaml.safe_dump(bad, sort_keys=False))
    page.click("#create")
    page.wait_for_selector('#form-errors li[data-field="spec.workers"]')
    assert "greater than or equal to 1" in page.inner_text(
        '#form-errors li[data-field="spec.workers"]'
    )
    # One only the API server knows (a name that is no DNS label): its dry run, by field.
    bad = push_task("Bad_Name", env.sink.url, ["a"])
    page.fill("#manifest", yaml.safe_dump(bad, sort_keys=False))
    page.click("#create")
    page.wait_for_selector('#form-errors li[data-field="metadata.name"]')
    assert env.kubectl("get", "pushtasks.pushtask.dev", "-o", "name").stdout.strip() == (
        "pushtask.pushtask.dev/fast"
    )

    # -- a slower task with <script> in a user id and the template: pause, resume --------
    slow_audience = [*users(2000, "s"), EVIL_USER]
    n = float(len(slow_audience))
    slow = push_task("slow", env.sink.url, slow_audience, workers=2, rate=100, body=EVIL_BODY)
    create_from_form(page, slow)
    page.wait_for_selector(row(env, "slow"))
    wait_for("sending under way", lambda: progress(page, row(env, "slow") + " progress")[0], 120)
    page.eval_on_selector("#manifest", "t => { t.scrollTop = 0; }")
    page.screenshot(path=str(SHOTS / "console-list.png"))
    page.click(row(env, "slow") + " a")
    page.wait_for_selector("#t-name:text('slow')")
    wait_for("a third sent", lambda: progress(page, "#t-progress")[0] > 500, 120)
    # While it runs: workers with their heartbeats, the chart climbing.
    page.wait_for_selector("#t-workers tbody tr")
    assert "s ago" in page.inner_text("#t-workers")
    page.screenshot(path=str(SHOTS / "console-task.png"), full_page=True)

    page.click("button[data-action=pause]")
    page.wait_for_selector("#action-message.ok")
    assert "Paused" in page.inner_text("#action-message")
    page.wait_for_selector("#t-phase:text('Paused')", timeout=60_000)
    assert env.task("slow")["spec"]["state"] == "Paused"
    paused_at = progress(page, "#t-progress")[0]
    assert paused_at < n

    # -- actions refused without the token or with a wrong one; nothing changes ----------
    for token, words in (("", "token is required"), ("wrong", "not valid")):
        set_token(page, token)
        page.click("button[data-action=resume]")
        page.wait_for_selector("#action-message.error")
        assert words in page.inner_text("#action-message")
        assert "Refused" in page.inner_text("#action-message")
    time.sleep(2)
    assert env.task("slow")["spec"]["state"] == "Paused"
    assert page.inner_text("#t-phase") == "Paused"

    set_token(page, TOKEN)
    page.click("button[data-action=resume]")
    page.wait_for_selector("#action-message.ok")
    page.wait_for_selector("#t-phase:text('Finished')", timeout=180_000)
    assert progress(page, "#t-progress") == (n, n)
    assert_each_once(env, slow_audience)

    # -- the task page: counts, chart, Events, the template as text ---------------------
    page.wait_for_selector(f'#t-counts td[data-count="sent"]:text-is("{int(n)}")')
    assert page.eval_on_selector_all("#rate-chart polyline", "ls => ls.length") == 1
    page.wait_for_selector("#t-events:has-text('Finished')")
    body = page.inner_text('#t-template td[data-template="body"]')
    assert body == EVIL_BODY

    # -- a transition the state machine refuses says why; scale changes spec.workers -----
    page.click("button[data-action=resume]")
    page.wait_for_selector("#action-message.error")
    assert "resume continues a paused run" in page.inner_text("#action-message")
    page.fill("#scale-workers", "3")
    page.click("button[data-action=scale]")
    page.wait_for_selector("#action-message.ok")
    assert "spec.workers 2 -> 3" in page.inner_text("#action-message")
    assert env.task("slow")["spec"]["workers"] == 3

    # -- the recipient lookup ----------------------------------------------------------
    def look_up(user: str) -> dict[str, str]:
        page.fill("#lookup-user", user)
        page.click("#lookup")
        page.wait_for_selector("#lookup-fields")
        fields = page.eval_on_selector_all(
            "#lookup-fields dd", "dds => dds.map(d => [d.dataset.field, d.textContent])"
        )
        page.evaluate("document.getElementById('lookup-result').replaceChildren()")
        return dict(fields)

    got = look_up("s-00007")
    assert (got["user"], got["status"], got["attempts"]) == ("s-00007", "sent", "1")
    assert look_up("nobody-here")["status"] == "not in the audience of run 1"
    got = look_up(EVIL_USER)
    assert (got["user"], got["status"]) == (EVIL_USER, "sent")
    page.fill("#lookup-user", EVIL_USER)
    page.click("#lookup")
    page.wait_for_selector("#lookup-fields")
    assert EVIL_USER in page.inner_text("#lookup-result")  # shown, as text

    # -- "Send a test": from a pod like the workers', marked, outside the run -----------
    counts = env.status("slow")["counts"]
    requests_before = len(env.sink.requests)
    page.fill("#test-to", f"t-1,{EVIL_USER}")
    page.fill("#test-attrs", "{")
    page.click("#test-send")
    page.wait_for_selector('#test-errors li[data-field="attrs"]')
    assert "not JSON" in page.inner_text("#test-errors")
    page.fill("#test-attrs", '{"name": "Ann"}')
    page.click("#test-send")
    page.wait_for_selector("#test-message.ok", timeout=180_000)
    results = page.eval_on_selector_all(
        "#test-results tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert sorted(r[:2] for r in results) == sorted([["t-1", "sent"], [EVIL_USER, "sent"]])
    env.quiet_sink()
    sent = env.sink.requests[requests_before:]
    assert sorted(r.user or "" for r in sent) == sorted(["t-1", EVIL_USER])
    assert all(r.test for r in sent), sent
    assert env.status("slow")["counts"] == counts
    assert not env.kubectl.json("get", "pods", "-l", "pushtask.dev/test-send=true")["items"]

    # Nothing that was shown ran: neither the user id nor the template.
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('main script').length") == 0
    assert page.evaluate("window.__sameDocument") == "yes"
    assert Path(SHOTS / "console-list.png").stat().st_size > 0
