"""The PushTask models: defaults, aliases, sources, and the same rejections as the API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from pushtask.models import (
    RUN_RULE,
    Apns,
    ConfigMapSource,
    Fcm,
    InlineSource,
    InlineUser,
    MongoSource,
    PushTask,
    PushTaskSpec,
    PushTaskStatus,
    UrlSource,
    describe_errors,
    field_path,
    validate_update,
)
from pushtask.states import DesiredState, Phase
from tests.bad_specs import (
    BAD_CASES,
    DEEP_CASES,
    GOOD_CASES,
    BadCase,
    DeepCase,
    GoodCase,
    names_field,
    pydantic_paths,
    valid_manifest,
)

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))

MINIMAL: dict[str, Any] = {
    "audience": {"sources": [{"kind": "inline", "users": ["u1"]}]},
    "message": {"webhook": {"url": "https://example.com/hook"}, "template": {"body": "hi"}},
}


def test_there_are_at_least_three_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"webhook-campaign.yaml", "mongo-audience.yaml", "cron-recurring.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_and_round_trip(path: Path) -> None:
    task = PushTask.model_validate(yaml.safe_load(path.read_text()))
    dumped = task.spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert PushTaskSpec.model_validate(dumped) == task.spec


def test_minimal_manifest_gets_the_documented_defaults() -> None:
    spec = PushTaskSpec.model_validate(MINIMAL)
    assert (spec.run, spec.state, spec.workers, spec.priority) == (1, DesiredState.STARTED, 1, 500)
    assert spec.rate.per_second == 100
    assert spec.audience.shards == 256 and spec.audience.exclude == []
    assert spec.message.channel == "webhook"
    assert spec.message.webhook is not None and spec.message.webhook.timeout_seconds == 10
    d = spec.delivery
    assert (d.guarantee.value, d.max_attempts) == ("AtMostOnce", 3)
    assert (d.backoff.initial_seconds, d.backoff.max_seconds, d.backoff.multiplier) == (1, 60, 2)
    assert (d.failure_threshold.ratio, d.failure_threshold.min_sample) == (0.5, 100)
    assert spec.schedule.time_zone == "UTC" and spec.schedule.windows == []
    assert spec.schedule.cron is None and spec.schedule.start_at is None


def test_camel_case_aliases_and_snake_case_names_both_work() -> None:
    by_alias = PushTaskSpec.model_validate({**MINIMAL, "rate": {"perSecond": 7}})
    by_name = PushTaskSpec.model_validate({**MINIMAL, "rate": {"per_second": 7}})
    assert by_alias == by_name
    dumped = by_alias.model_dump(by_alias=True, mode="json")
    assert dumped["rate"] == {"perSecond": 7.0}
    assert "failureThreshold" in dumped["delivery"]


def test_window_from_is_aliased() -> None:
    spec = PushTaskSpec.model_validate(
        {**MINIMAL, "schedule": {"windows": [{"from": "22:00", "to": "02:00"}]}}
    )
    (window,) = spec.schedule.windows
    assert (window.from_, window.to) == ("22:00", "02:00")  # crossing midnight is fine
    assert [d.value for d in window.days] == ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    assert spec.model_dump(by_alias=True)["schedule"]["windows"][0]["from"] == "22:00"


def test_inline_users_are_ids_or_objects_with_free_attributes() -> None:
    src = InlineSource.model_validate(
        {"kind": "inline", "users": ["a", 1001, {"id": 7, "name": "Ada", "tags": ["x"]}]}
    )
    assert src.users[0] == "a" and src.users[1] == "1001"  # YAML numbers become ids
    user = src.users[2]
    assert isinstance(user, InlineUser) and user.id == "7"
    assert user.model_dump() == {"id": "7", "name": "Ada", "tags": ["x"]}
    with pytest.raises(ValidationError, match="id"):
        InlineSource.model_validate({"kind": "inline", "users": [{"name": "no id"}]})
    with pytest.raises(ValidationError):
        InlineSource.model_validate({"kind": "inline", "users": [""]})


def test_source_kinds_have_their_own_defaults() -> None:
    spec = PushTaskSpec.model_validate(
        {
            **MINIMAL,
            "audience": {
                "sources": [
                    {"kind": "mongo", "collection": "users"},
                    {"kind": "configMap", "name": "cm", "key": "ids"},
                    {"kind": "url", "url": "https://x/u.jsonl", "format": "jsonl"},
                ],
            },
        }
    )
    mongo, cm, url = spec.audience.sources
    assert isinstance(mongo, MongoSource)
    assert (mongo.id_field, mongo.filter, mongo.secret_ref) == ("_id", {}, None)
    assert isinstance(cm, ConfigMapSource) and (cm.format, cm.id_field) == ("lines", "id")
    assert isinstance(url, UrlSource) and (url.format, url.id_field) == ("jsonl", "id")


def test_secret_refs_default_their_keys() -> None:
    spec = PushTaskSpec.model_validate(
        {
            "audience": {
                "sources": [{"kind": "mongo", "collection": "u", "secretRef": {"name": "db"}}]
            },
            "message": {
                "webhook": {"url": "https://x", "secretRef": {"name": "h"}},
                "template": {"body": "b"},
            },
        }
    )
    mongo = spec.audience.sources[0]
    assert isinstance(mongo, MongoSource) and mongo.secret_ref is not None
    assert mongo.secret_ref.key == "uri"
    assert spec.message.webhook is not None and spec.message.webhook.secret_ref is not None
    assert spec.message.webhook.secret_ref.key == "hmac"


def test_plugin_channels_need_no_builtin_settings() -> None:
    spec = PushTaskSpec.model_validate(
        {
            "audience": MINIMAL["audience"],
            "message": {"channel": "pigeon", "settings": {"loft": "n"}, "template": {"body": "b"}},
        }
    )
    assert spec.message.channel == "pigeon" and spec.message.settings == {"loft": "n"}


def test_mobile_channels_take_credentials_only_from_secrets() -> None:
    fcm = Fcm.model_validate({"serviceAccountSecretRef": {"name": "fcm"}})
    assert fcm.service_account_secret_ref.key == "service-account.json"
    assert (fcm.token_attribute, fcm.endpoint) == ("deviceToken", "https://fcm.googleapis.com")
    apns = Apns.model_validate(
        {"keySecretRef": {"name": "a"}, "keyId": "KEY1234567", "teamId": "TEAM123456",
         "topic": "com.example.app"}
    )  # fmt: skip
    assert apns.key_secret_ref.key == "key.p8" and apns.ca_secret_ref is None
    assert (apns.push_type, apns.priority, apns.environment) == ("alert", 10, "production")
    # No field takes a key inline: unknown fields are refused.
    with pytest.raises(ValidationError, match="privateKey"):
        Fcm.model_validate({"serviceAccountSecretRef": {"name": "f"}, "privateKey": "-----"})
    with pytest.raises(ValidationError, match="p8"):
        Apns.model_validate({**apns.model_dump(by_alias=True), "p8": "-----"})


def test_configmap_send_at_field_needs_a_structured_format() -> None:
    with pytest.raises(ValidationError, match="sendAtField needs format csv or jsonl"):
        ConfigMapSource.model_validate(
            {"kind": "configMap", "name": "c", "key": "k", "sendAtField": "at"}
        )
    ok = ConfigMapSource.model_validate(
        {"kind": "configMap", "name": "c", "key": "k", "format": "csv", "sendAtField": "at"}
    )
    assert ok.send_at_field == "at"


def test_start_at_must_carry_a_time_zone() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        PushTaskSpec.model_validate({**MINIMAL, "schedule": {"startAt": "2026-01-01T00:00:00"}})
    spec = PushTaskSpec.model_validate({**MINIMAL, "schedule": {"startAt": "2026-01-01T00:00:00Z"}})
    assert spec.schedule.start_at is not None and spec.schedule.start_at.utcoffset() is not None


def test_the_valid_manifest_of_the_bad_cases_is_valid() -> None:
    PushTask.model_validate(valid_manifest())


def test_there_are_at_least_fifteen_bad_cases() -> None:
    assert len(BAD_CASES) >= 15
    assert len({c.name for c in BAD_CASES}) == len(BAD_CASES)


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.name)
def test_bad_manifest_is_rejected_naming_the_field(case: BadCase) -> None:
    with pytest.raises(ValidationError) as info:
        PushTask.model_validate(case.manifest())
    text = pydantic_paths(info.value)
    assert names_field(text, case.py or case.path), text


@pytest.mark.parametrize("case", GOOD_CASES, ids=lambda c: c.name)
def test_manifest_at_a_bound_is_accepted(case: GoodCase) -> None:
    PushTask.model_validate(case.manifest())


@pytest.mark.parametrize("case", DEEP_CASES, ids=lambda c: c.name)
def test_query_refused_at_any_depth_names_the_operator(case: DeepCase) -> None:
    with pytest.raises(ValidationError) as info:
        PushTask.model_validate(case.manifest())
    text = pydantic_paths(info.value)
    assert names_field(text, case.py) and f"(at {case.refused})" in text, text


def test_case_names_are_unique_across_the_lists() -> None:
    names = [c.name for c in BAD_CASES] + [c.name for c in GOOD_CASES]
    names += [c.name for c in DEEP_CASES]
    assert len(set(names)) == len(names)


def test_the_inline_cap_points_to_the_other_sources() -> None:
    with pytest.raises(ValidationError) as info:
        InlineSource.model_validate({"kind": "inline", "users": [str(i) for i in range(10_001)]})
    (error,) = info.value.errors()
    assert "at most 10,000 users" in error["msg"] and "configMap, url or mongo" in error["msg"]


def test_yaml_numbers_are_ids_and_attributes_are_bounded() -> None:
    src = InlineSource.model_validate({"kind": "inline", "users": [1001, {"id": 7}]})
    assert src.users == ["1001", InlineUser(id="7")]
    with pytest.raises(ValidationError, match="at most 64 attributes"):
        InlineUser.model_validate({"id": "u", **{f"a{i}": i for i in range(64)}})


def test_models_do_not_import_schedule() -> None:
    # The circle models <-> schedule is broken by pushtask.validators (a leaf module).
    import ast
    import inspect

    from pushtask import models, validators

    imported = {
        node.module
        for mod in (models, validators)
        for node in ast.walk(ast.parse(inspect.getsource(mod)))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "pushtask.schedule" not in imported
    leaf = ast.parse(inspect.getsource(validators))
    assert not [
        n
        for n in ast.walk(leaf)
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("pushtask")
    ]


def test_run_must_not_decrease_on_update() -> None:
    old = PushTaskSpec.model_validate({**MINIMAL, "run": 3})
    validate_update(old, PushTaskSpec.model_validate({**MINIMAL, "run": 3}))
    validate_update(old, PushTaskSpec.model_validate({**MINIMAL, "run": 4}))
    with pytest.raises(ValueError, match=r"spec\.run must not decrease"):
        validate_update(old, PushTaskSpec.model_validate({**MINIMAL, "run": 2}))
    assert RUN_RULE.check is None  # a transition rule: it needs the old object


def test_status_parses_what_the_server_holds_and_dumps_camel_case() -> None:
    status = PushTaskStatus.model_validate(
        {
            "phase": "Started",
            "run": 2,
            "runId": "ns.t.2.abcd1234",
            "counts": {"audience": 10, "sent": 4},
            "workers": {"desired": 3, "ready": 2, "live": 2},
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ],
            "kopf": {"progress": {}},  # tolerated: status is read, never rejected
        }
    )
    assert status.phase is Phase.STARTED and status.counts is not None
    assert (status.counts.sent, status.counts.failed) == (4, 0)
    out = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert out["runId"] == "ns.t.2.abcd1234"
    assert out["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert "kopf" not in out


def test_errors_read_as_kubernetes_field_paths() -> None:
    manifest = valid_manifest()
    manifest["spec"]["audience"]["sources"].append({"kind": "mongo"})
    manifest["spec"]["message"]["channel"] = "smtp"
    with pytest.raises(ValidationError) as info:
        PushTaskSpec.model_validate(manifest["spec"])
    assert describe_errors(info.value, prefix="spec") == [
        "spec.audience.sources[1].collection: Field required",
        "spec.message: spec.message.smtp is required when spec.message.channel is smtp",
    ]
    # A source's kind is a union tag in pydantic's location, not a field; a field named
    # like a kind (a url source's `url`) is kept.
    assert field_path(("audience", "sources", 0, "url", "url")) == "audience.sources[0].url"
