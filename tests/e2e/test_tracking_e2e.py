"""Link click tracking and conversions end to end on devstack: the chart installed with the
tracker on (`tracker.enabled=true`, its own Deployment and Service, the key and the
conversions' bearer token from Secrets), a task with `message.tracking.links` run to
Finished against the webhook sink, a link taken from a received message followed through
the tracker pod, conversions posted to it, and both reaching the task's status through
the operator (which keeps reading a finished run's clicks and conversions)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.release import QualifiedEnv, on_devstack, ready_pod_ip, release
from tests.e2e.test_cli_e2e import kubectl_push
from tests.e2e.test_operator_e2e import database_uri, push_task, users, wait_for
from tests.support.browser import browser, web_page  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

KEY = "tracker-e2e-key-0123456789abcdef"
BEARER = "tracker-e2e-conversions-token"
PORT = 8080
CONSOLE_PORT = 8081
SALE = "https://shop.example/sale"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the test looks at the redirect itself, never at shop.example


def get(url: str, user_agent: str = BROWSER) -> tuple[int, str | None]:
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers={"User-Agent": user_agent})
    try:
        with opener.open(request, timeout=10) as reply:
            return reply.status, reply.headers.get("Location")
    except urllib.error.HTTPError as error:  # 302 (not followed) and 404 land here
        return error.code, error.headers.get("Location")


def post(url: str, body: dict[str, Any], bearer: str | None = BEARER) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def tracker_url(env: QualifiedEnv) -> str:
    return f"http://{ready_pod_ip(env, 'pushtask-tracker')}:{PORT}"


@pytest.fixture
def tracker_env(
    kubectl: Any, helm: Any, namespace: str, mongo_uri: str, pushtask_crd: None
) -> Iterator[QualifiedEnv]:
    on_devstack()
    k = kubectl.in_namespace(namespace)
    # One Secret for both sides here: the tracker verifies with it (chart value) and the
    # task's workers sign with it (spec.message.tracking.secretRef, the task's namespace).
    k("create", "secret", "generic", "tracker-key", f"--from-literal=key={KEY}")
    k("create", "secret", "generic", "tracker-conversions", f"--from-literal=token={BEARER}")
    k("create", "secret", "generic", "console-token", "--from-literal=token=console-e2e")
    db_uri = database_uri(mongo_uri, f"e2e_{namespace.replace('-', '_')}"[:60])
    with release(
        kubectl, helm, namespace, db_uri,
        "tracker.enabled=true", "tracker.keySecret.name=tracker-key", f"tracker.port={PORT}",
        "tracker.conversionsTokenSecret.name=tracker-conversions",
        # The console too, to see what it shows of clicks and conversions (another port:
        # devstack's pods share the host's network).
        "console.enabled=true", "console.tokenSecret.name=console-token",
        f"console.port={CONSOLE_PORT}",
        keep_messages=True,
    ) as env:  # fmt: skip
        yield env


def test_a_click_and_conversions_reach_the_status(
    tracker_env: QualifiedEnv,
    web_page: Any,  # noqa: F811
) -> None:
    env = tracker_env
    base = tracker_url(env)
    audience = users(5, "tr")
    task = push_task(
        "tracked", env.sink.url, audience, workers=1, rate=100,
        body=f"Hi {{{{ user }}}}, the sale: {SALE}",
    )  # fmt: skip
    task["spec"]["message"]["tracking"] = {
        "links": True,
        "baseUrl": base,
        "secretRef": {"name": "tracker-key"},
    }
    env.apply(task)
    wait_for("tracked Finished", lambda: env.phase("tracked") == "Finished", 180)
    status = env.status("tracked")
    assert status["counts"]["sent"] == len(audience)
    # Tracked, nobody clicked yet.
    assert (status["clicks"], status["clickers"], status["clickThrough"]) == (0, 0, "0.0%")

    (message,) = [r.message for r in env.sink.requests if r.user == audience[0] and r.message]
    links = re.findall(re.escape(base) + r"/c/[A-Za-z0-9_-]+", message["body"])
    assert len(links) == 1 and SALE not in message["body"], message
    # The per-recipient link of push_task's template is built per user: left as it is.
    assert message["link"] == f"https://shop/s?u={audience[0]}"

    # A link expander's fetch and a forged link: redirected / refused, neither counted.
    assert get(links[0], "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)") == (
        302,
        SALE,
    )
    link = links[0]
    # (Not the last character: it may carry base64's unused bits.)
    forged = link[:-3] + ("A" if link[-3] != "A" else "B") + link[-2:]
    assert get(forged)[0] == 404
    # The person's click, twice: one click.
    assert get(links[0]) == (302, SALE)
    assert get(links[0]) == (302, SALE)

    def clicked() -> dict[str, Any] | None:
        s = env.status("tracked")
        return s if s.get("clicks") == 1 else None

    # The operator reads a finished run's clicks every 10 s (progress.CLICKS_REFRESH_SECONDS).
    final = wait_for("status.clicks == 1", clicked, 60)
    assert (final["clickers"], final["clickThrough"]) == (1, "20.0%")
    assert final["phase"] == "Finished"
    assert final["conversions"] == []  # a tracked run, no conversion yet

    # Conversions: for the clicked link's token, and for another recipient by name.
    conversions = f"{base}/v1/conversions"
    by_token = {"event": "purchase", "token": link.removeprefix(f"{base}/c/")}
    assert post(conversions, by_token, bearer=None)[0] == 401
    assert post(conversions, by_token, bearer="wrong")[0] == 401
    assert post(conversions, by_token)[0] == 201
    assert post(conversions, by_token) == (
        200,
        {"recorded": False, "run": final["runId"], "user": audience[0], "event": "purchase"},
    )
    by_name = {"event": "purchase", "task": f"{env.namespace}/tracked", "run": 1}
    assert post(conversions, {**by_name, "user": audience[1]})[0] == 201
    assert post(conversions, {**by_name, "user": "not-a-recipient"})[0] == 404

    def converted() -> list[dict[str, Any]] | None:
        found = env.status("tracked").get("conversions") or []
        return found if found and found[0].get("count") == 2 else None

    assert wait_for("status.conversions purchase == 2", converted, 60) == [
        {"event": "purchase", "count": 2, "rate": "40.0%"}
    ]

    # What people see: `kubectl get -o wide` (the API server's printer columns),
    # `kubectl push status` and the console's task page, in a browser.
    header, line = env.kubectl(
        "get", "pushtasks.pushtask.dev", "tracked", "-o", "wide"
    ).stdout.splitlines()
    # By the header's positions: an empty column (a Finished task's ETA) leaves no word.
    columns = [(m.group(), m.start()) for m in re.finditer(r"\S+", header)]
    ends = [start for _, start in columns[1:]] + [len(line)]
    wide = {n: line[a:b].strip() for (n, a), b in zip(columns, ends, strict=True)}
    assert (wide["CLICKS"], wide["CTR"], wide["ETA"]) == ("1", "20.0%", ""), (header, line)
    proc = kubectl_push(env.kubectl, "-n", env.namespace, "status", "tracked")
    assert proc.returncode == 0, proc.stderr
    assert "clicks 1 (20.0%)" in proc.stdout and "purchase 2 (40.0%)" in proc.stdout, proc.stdout
    console = f"http://{ready_pod_ip(env, 'pushtask-console')}:{CONSOLE_PORT}/"
    page = web_page
    page.goto(f"{console}#/task/{env.namespace}/tracked")
    page.wait_for_selector('#t-counts td[data-count="clicks"]:text-is("1")')
    assert page.inner_text('#t-counts td[data-count="clickers"]') == "1"
    assert page.inner_text('#t-counts td[data-count="clickThrough"]') == "20.0%"
    assert page.inner_text('#t-counts td[data-conversion="purchase"]') == "2 (40.0%)"
    page.wait_for_selector("#t-links tbody tr")
    link_rows = page.eval_on_selector_all(
        "#t-links tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText))"
    )
    assert link_rows == [["#0", SALE, "1"]]
