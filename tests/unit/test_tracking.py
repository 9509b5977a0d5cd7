"""Link click tracking's pure parts: tokens, link targets, rewriting, prefetchers."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from pydantic import ValidationError

from pushtask import tracking
from pushtask.models import Message, PushTaskSpec
from pushtask.records import ClickTotals, ConversionTotals
from pushtask.tracking import (
    BadToken,
    Click,
    Conversion,
    LinkRewriter,
    conversion_window,
    is_prefetcher,
    link_targets,
    parse_conversion,
    parse_window,
    rewrite_links,
    run_targets,
    sign,
    verify,
)

KEY = b"k" * 32
OLD = b"o" * 32
BASE = "https://t.example.com"


# -- tokens ----------------------------------------------------------------------------


def test_a_token_names_run_user_and_link() -> None:
    token = sign(KEY, "ns.sale.1.abcd1234", "user-42", 3)
    assert verify([KEY], token) == Click("ns.sale.1.abcd1234", "user-42", 3)


def test_a_token_is_url_safe_and_compact() -> None:
    token = sign(KEY, "ns.sale.1.abcd1234", "user-42", 3)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(token) < 64


@pytest.mark.parametrize("user", ["a/b:c d|é@x.example", "line\nbreak\n7", "\n"])
def test_a_user_id_of_any_text_round_trips(user: str) -> None:
    assert verify([KEY], sign(KEY, "r", user, 3)) == Click("r", user, 3)


def test_a_token_of_another_key_is_refused() -> None:
    with pytest.raises(BadToken):
        verify([KEY], sign(b"x" * 32, "r", "u", 0))


def test_a_previous_key_still_verifies_during_a_rotation() -> None:
    token = sign(OLD, "r", "u", 1)
    assert verify([KEY, OLD], token) == Click("r", "u", 1)
    with pytest.raises(BadToken):
        verify([KEY], token)


def test_an_altered_payload_is_refused() -> None:
    token = sign(KEY, "r", "alice", 0)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[2] ^= 0x01  # "alice" -> another user, same MAC
    altered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(BadToken):
        verify([KEY], altered)


def test_a_forged_payload_with_a_guessed_mac_is_refused() -> None:
    payload = b"r\nalice\n0" + b"\0" * tracking.MAC_BYTES
    forged = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    with pytest.raises(BadToken):
        verify([KEY], forged)


@pytest.mark.parametrize("token", ["", "!!!", "abc", "A" * 200, sign(KEY, "r", "u", 0)[:-2]])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(BadToken):
        verify([KEY], token)


def test_an_empty_key_verifies_nothing_and_signs_nothing() -> None:
    with pytest.raises(ValueError):
        sign(b"", "r", "u", 0)
    with pytest.raises(BadToken):
        verify([b""], sign(KEY, "r", "u", 0))


# -- link targets and rewriting --------------------------------------------------------


def test_targets_are_the_literal_urls_of_the_templates_in_field_order() -> None:
    template = {
        "title": "Sale at https://shop.example/a!",
        "body": "See https://shop.example/b, or https://shop.example/a. Hi {{ name }}",
        "link": "https://shop.example/c?x=1&y=2",
        "extra": {"deep": "https://shop.example/d"},
    }
    # Fields in name order: body, extra.deep, link, title; duplicates once.
    assert link_targets(template) == (
        "https://shop.example/b",
        "https://shop.example/a",
        "https://shop.example/d",
        "https://shop.example/c?x=1&y=2",
    )


def test_urls_built_per_recipient_and_the_trackers_own_are_not_targets() -> None:
    template = {
        "body": "Yours: https://shop.example/?u={{ user }} and https://t.example.com/c/x",
        "link": "https://shop.example/static",
    }
    assert link_targets(template, BASE) == ("https://shop.example/static",)


def test_rewriting_replaces_only_targets_and_keeps_other_text() -> None:
    index = {"https://a.example/x": 0, "https://b.example/y": 1}
    text = "Go https://a.example/x. Or https://b.example/y, not https://c.example/z; ftp://a"
    out = rewrite_links(text, index, lambda i: f"<T{i}>")
    assert out == "Go <T0>. Or <T1>, not https://c.example/z; ftp://a"


def test_text_without_links_is_returned_as_is() -> None:
    assert rewrite_links("no links here", {"https://a.example": 0}, str) == "no links here"


def test_rewriting_is_idempotent() -> None:
    spec = _spec(body="Buy https://shop.example/a now", link="https://shop.example/b")
    links = LinkRewriter.for_run("r1", spec, KEY)
    assert links is not None
    once = links.rewrite({"body": "Buy https://shop.example/a now"}, "u1")
    assert links.rewrite(once, "u1") == once


def test_a_rendered_message_gets_each_recipients_own_tracked_links() -> None:
    spec = _spec(body="Hi {{ user }}: https://shop.example/a", link="https://shop.example/b")
    links = LinkRewriter.for_run("r1", spec, KEY)
    assert links is not None
    assert links.targets == ("https://shop.example/a", "https://shop.example/b")
    out = links.rewrite(
        {"body": "Hi u1: https://shop.example/a", "link": "https://shop.example/b", "n": 1}, "u1"
    )
    assert out["n"] == 1
    prefix = f"{BASE}/c/"
    body_url = out["body"].split(": ")[1]
    assert body_url.startswith(prefix) and out["link"].startswith(prefix)
    assert verify([KEY], body_url.removeprefix(prefix)) == Click("r1", "u1", 0)
    assert verify([KEY], out["link"].removeprefix(prefix)) == Click("r1", "u1", 1)
    # The tracker derives the same targets from the frozen spec alone.
    assert run_targets(spec) == links.targets


def test_no_rewriting_when_the_run_does_not_track_links() -> None:
    spec = _spec(body="https://shop.example/a")
    spec["message"]["tracking"]["links"] = False
    assert LinkRewriter.for_run("r1", spec, KEY) is None


def test_tracking_without_the_key_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="PUSHTASK_TRACKER_KEY"):
        LinkRewriter.for_run("r1", _spec(body="https://shop.example/a"), b"")


# -- prefetchers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "ua",
    [
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "facebookexternalhit/1.1",
        "Twitterbot/1.0",
        "LinkedInBot/1.0 (compatible; Mozilla/5.0)",
        "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
        "WhatsApp/2.23.20.0",
        "TelegramBot (like TwitterBot)",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (compatible; bingbot/2.0)",
        "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.12026; Pro)",
        "Barracuda Sentinel (EE)",
        "Proofpoint URL Defense",
    ],
)
def test_known_prefetchers_are_recognised(ua: str) -> None:
    assert is_prefetcher(ua)


@pytest.mark.parametrize(
    "ua",
    [
        None,
        "",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148",
        "curl/8.5.0",
    ],
)
def test_people_are_not_prefetchers(ua: str | None) -> None:
    assert not is_prefetcher(ua)


# -- the spec and the status -----------------------------------------------------------


def test_tracking_links_needs_a_base_url_and_a_key() -> None:
    for block, words in (
        ({"links": True, "secretRef": {"name": "k"}}, "needs baseUrl"),
        ({"links": True, "baseUrl": BASE}, "needs secretRef"),
    ):
        with pytest.raises(ValidationError, match=words):
            Message.model_validate(
                {"webhook": {"url": "https://h.example"}, "template": {"body": "x"},
                 "tracking": block}
            )  # fmt: skip
    message = Message.model_validate(
        {
            "webhook": {"url": "https://h.example"},
            "template": {"body": "x"},
            "tracking": {"links": True, "baseUrl": BASE, "secretRef": {"name": "tracker"}},
        }
    )
    assert message.tracking is not None and message.tracking.secret_ref is not None
    assert message.tracking.secret_ref.key == "key"


def test_the_crd_carries_the_tracking_rule() -> None:
    from pushtask.crdgen import crd

    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    tracking_schema = schema["properties"]["spec"]["properties"]["message"]["properties"][
        "tracking"
    ]
    rules = [r["rule"] for r in tracking_schema["x-kubernetes-validations"]]
    assert rules == ["!self.links || has(self.baseUrl)", "!self.links || has(self.secretRef)"]
    status = schema["properties"]["status"]["properties"]
    assert {"clicks", "clickers", "clickThrough"} <= set(status)


def test_click_through_is_clickers_per_delivered_message() -> None:
    assert ClickTotals(5, 3, {0: 3}).click_through(200) == "1.5%"
    assert ClickTotals(0, 0, {}).click_through(0) == "0.0%"


def _spec(**template: str) -> dict:
    spec = PushTaskSpec.model_validate(
        {
            "audience": {"sources": [{"kind": "inline", "users": ["u1"]}]},
            "message": {
                "webhook": {"url": "https://h.example"},
                "template": template,
                "tracking": {"links": True, "baseUrl": BASE, "secretRef": {"name": "tracker"}},
            },
        }
    )
    return spec.model_dump(by_alias=True, mode="json", exclude_none=True)


# -- conversions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "window"),
    [("30m", timedelta(minutes=30)), ("48h", timedelta(hours=48)), ("7d", timedelta(days=7)),
     ("999d", timedelta(days=999)), ("1m", timedelta(minutes=1))],
)  # fmt: skip
def test_conversion_windows(text: str, window: timedelta) -> None:
    assert parse_window(text) == window


@pytest.mark.parametrize("text", ["", "7", "0d", "1w", "1.5h", "-1d", "1000d", "7 d", "07d"])
def test_bad_conversion_windows(text: str) -> None:
    with pytest.raises(ValueError):
        parse_window(text)


def test_the_window_defaults_to_a_week_and_is_checked_by_the_models() -> None:
    spec = _spec(body="x")
    assert conversion_window(spec) == timedelta(days=7)
    spec["message"]["tracking"]["conversionWindow"] = "2h"
    assert conversion_window(spec) == timedelta(hours=2)
    with pytest.raises(ValidationError, match="conversionWindow"):
        Message.model_validate(
            {"webhook": {"url": "https://h.example"}, "template": {"body": "x"},
             "tracking": {"conversionWindow": "1000d"}}
        )  # fmt: skip


def test_a_conversion_for_a_token() -> None:
    assert parse_conversion({"event": "purchase", "token": "abc"}) == Conversion(
        "purchase", token="abc"
    )


def test_a_conversion_for_a_task_run_and_user() -> None:
    asked = parse_conversion({"event": "sign-up", "task": "shop/sale", "run": 3, "user": "u 1"})
    assert asked == Conversion("sign-up", namespace="shop", name="sale", run=3, user="u 1")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([], "JSON object"),
        ({"token": "abc"}, "event"),
        ({"event": "a.b", "token": "abc"}, "event"),
        ({"event": "$set", "token": "abc"}, "event"),
        ({"event": "x" * 64, "token": "abc"}, "event"),
        ({"event": "buy", "token": ""}, "token"),
        ({"event": "buy", "token": "abc", "user": "u"}, "either token"),
        ({"event": "buy", "task": "sale", "run": 1, "user": "u"}, "task"),
        ({"event": "buy", "task": "shop/sale", "run": 0, "user": "u"}, "run"),
        ({"event": "buy", "task": "shop/sale", "run": True, "user": "u"}, "run"),
        ({"event": "buy", "task": "shop/sale", "run": 1}, "user"),
    ],
)
def test_bad_conversions_say_what_is_wrong(body: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_conversion(body)


def test_conversion_rates_are_per_sent_message_by_event_name() -> None:
    totals = ConversionTotals({"signup": 1, "purchase": 3})
    assert totals.status(200) == [
        {"event": "purchase", "count": 3, "rate": "1.5%"},
        {"event": "signup", "count": 1, "rate": "0.5%"},
    ]
    assert totals.status(0)[0]["rate"] == "0.0%"
