"""A frequency cap across campaigns on devstack (issue 26, item 5), as a user meets it:
labelled PushTasks applied with kubectl, the operator freezing their labels into their
runs, and the capped campaign's recipients counted at the webhook sink per task."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.e2e.test_operator_e2e import (
    Env,
    env,  # noqa: F401  (the operator suite's fixture: a release, a sink)
    push_task,
    users,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

AUDIENCE = users(200)
PROMOTIONS = {"cap-group": "promotions"}
CAP = {"kind": "recentlySent", "within": "24h", "selector": {"matchLabels": PROMOTIONS}}


def received_from(task_env: Env, name: str) -> list[str]:
    """Users the sink heard from task `name`, one entry per delivered request."""
    return sorted(
        r.user
        for r in list(task_env.sink.requests)
        if r.user and r.task and r.task.endswith(f"/{name}") and 200 <= r.status < 300
    )


def labelled(manifest: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    manifest["metadata"]["labels"] = labels
    return manifest


def test_a_capped_campaign_leaves_out_whom_the_labelled_campaigns_messaged(env: Env) -> None:  # noqa: F811
    env.apply(labelled(push_task("promo-a", env.sink.url, AUDIENCE[:80], workers=1), PROMOTIONS))
    env.apply(push_task("notice", env.sink.url, AUDIENCE[80:120], workers=1))  # not labelled
    env.wait_phase("promo-a", "Finished", 180)
    env.wait_phase("notice", "Finished", 180)

    capped = labelled(push_task("promo-b", env.sink.url, AUDIENCE, workers=2), PROMOTIONS)
    capped["spec"]["audience"]["exclude"] = [CAP]
    env.apply(capped)
    status = env.wait_phase("promo-b", "Finished", 180)
    got = received_from(env, "promo-b")
    print(
        f"frequency cap on devstack: promo-a sent {len(received_from(env, 'promo-a'))}, "
        f"notice {len(received_from(env, 'notice'))}, the capped promo-b "
        f"{len(got)} of {len(AUDIENCE)}; counts {status.get('counts')}"
    )
    assert got == AUDIENCE[80:], "promo-a's 80 are capped; the unlabelled notice caps nobody"
    assert received_from(env, "promo-a") == AUDIENCE[:80]

    # promo-b's own run is labelled too: a second promotion now caps everyone.
    again = labelled(push_task("promo-c", env.sink.url, AUDIENCE, workers=1), PROMOTIONS)
    again["spec"]["audience"]["exclude"] = [CAP]
    env.apply(again)
    env.wait_phase("promo-c", "Finished", 180)
    assert received_from(env, "promo-c") == []


def test_the_api_server_refuses_a_frequency_cap_among_the_sources(env: Env) -> None:  # noqa: F811
    bad = push_task("capped-sources", env.sink.url, AUDIENCE[:5], workers=1)
    bad["spec"]["audience"]["sources"].append(CAP)
    done = env.kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert done.returncode != 0
    assert "recentlySent is an exclusion only" in done.stderr, done.stderr
    bad["spec"]["audience"]["sources"].pop()
    bad["spec"]["audience"]["exclude"] = [{**CAP, "within": "24 hours"}]
    done = env.kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert done.returncode != 0 and "within" in done.stderr, done.stderr
