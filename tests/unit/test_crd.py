"""The generated CRD: fresh, structural, and saying what the models say."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from pushtask import crdgen, models, mongoquery, schedule, validators
from pushtask.models import PushTaskSpec, PushTaskStatus

ROOT = Path(__file__).parents[2]
REGENERATE = "python -m pushtask.crdgen > crds/pushtask.yaml"


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_crds_folder_is_fresh() -> None:
    on_disk = (ROOT / "crds" / "pushtask.yaml").read_text()
    assert on_disk == crdgen.crd_yaml(), f"crds/pushtask.yaml is stale: run `{REGENERATE}`"


def test_reference_doc_is_fresh() -> None:
    on_disk = (ROOT / "docs" / "reference.md").read_text()
    assert on_disk == crdgen.reference_markdown(), (
        "docs/reference.md is stale: run `python -m pushtask.crdgen --reference > "
        "docs/reference.md`"
    )


def test_yaml_has_no_anchors_and_parses_back() -> None:
    text = crdgen.crd_yaml()
    assert "&id" not in text and "*id" not in text
    assert yaml.safe_load(text) == crdgen.crd()


def test_schema_is_structural() -> None:
    assert crdgen.structural_problems(_schema()) == []


def test_names_scope_and_subresources() -> None:
    spec = crdgen.crd()["spec"]
    assert crdgen.crd()["metadata"]["name"] == "pushtasks.pushtask.dev"
    assert spec["group"] == "pushtask.dev" and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "PushTask",
        "listKind": "PushTaskList",
        "plural": "pushtasks",
        "singular": "pushtask",
        "shortNames": ["pt"],
        "categories": ["pushtask"],
    }
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.workers",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_printer_columns() -> None:
    columns = crdgen.crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    shown = [c["name"] for c in columns if not c.get("priority")]
    assert shown == ["Phase", "Run", "Sent", "Total", "Rate", "Workers", "Age"]
    by_name = {c["name"]: c["jsonPath"] for c in columns}
    assert by_name["Sent"] == ".status.counts.sent"
    assert by_name["Total"] == ".status.counts.audience"
    assert by_name["Workers"] == ".status.workers.live"
    # -o wide adds, for a run that tracks links, its clicks and click-through.
    wide = [c["name"] for c in columns if c.get("priority")]
    assert wide == ["ETA", "Clicks", "CTR", "Message"]
    assert (by_name["Clicks"], by_name["CTR"]) == (".status.clicks", ".status.clickThrough")


def _walk_model(model: type[BaseModel], schema: dict[str, Any], path: str) -> list[str]:
    """Fields of `model` (recursively) that the schema does not declare."""
    missing: list[str] = []
    props = schema.get("properties", {})
    for name, field in model.model_fields.items():
        alias = field.alias or name
        if alias not in props:
            missing.append(f"{path}.{alias}")
            continue
        sub = props[alias]
        sub = sub.get("items", sub)
        annotation = field.annotation
        for arg in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                missing += _walk_model(arg, sub, f"{path}.{alias}")
            for inner in getattr(arg, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    missing += _walk_model(inner, sub, f"{path}.{alias}")
    return missing


def test_every_status_field_is_declared() -> None:
    # The API server silently prunes undeclared status fields the operator writes.
    assert _walk_model(PushTaskStatus, _schema()["properties"]["status"], "status") == []


def test_every_spec_field_is_declared() -> None:
    assert _walk_model(PushTaskSpec, _schema()["properties"]["spec"], "spec") == []


def test_status_declares_no_defaults() -> None:
    assert "default:" not in yaml.safe_dump(_schema()["properties"]["status"])


def test_conditions_are_a_list_map_keyed_by_type() -> None:
    conditions = _schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


def test_phase_enum_is_the_seven_states() -> None:
    phase = _schema()["properties"]["status"]["properties"]["phase"]
    assert phase["enum"] == [
        "Ready", "Started", "Paused", "Stopped", "Finished", "Failed", "Reboot",
    ]  # fmt: skip


def test_sources_are_one_object_with_a_kind_enum_and_rules_per_kind() -> None:
    audience = _schema()["properties"]["spec"]["properties"]["audience"]["properties"]
    for key in ("sources", "exclude"):
        item = audience[key]["items"]
        assert item["type"] == "object" and item["required"] == ["kind"]
        assert item["properties"]["kind"]["enum"] == [
            "inline",
            "mongo",
            "configMap",
            "url",
            "recentlySent",
        ]
        rules = {r["rule"]: r for r in item["x-kubernetes-validations"]}
        assert rules["self.kind != 'mongo' || has(self.collection)"]["fieldPath"] == ".collection"
        assert "self.kind != 'url' || has(self.url)" in rules
        assert "self.kind != 'recentlySent' || has(self.within)" in rules
        # A default in the merged object would land on every kind: none for per-kind fields.
        assert "default" not in item["properties"]["idField"]
        assert "default" not in item["properties"]["filter"]
        # An entry is a string or an object: untyped, with the rules of each JSON type.
        entry = item["properties"]["users"]["items"]
        assert "type" not in entry and entry["x-kubernetes-preserve-unknown-fields"] is True
        assert (entry["minLength"], entry["maxLength"]) == (1, models.MAX_ID_LENGTH)
        assert entry["pattern"] == validators.NO_CONTROL_PATTERN
        assert entry["required"] == ["id"] and entry["maxProperties"] == models.MAX_ATTRIBUTES
        assert (entry["minItems"], entry["maxItems"]) == (1, 0)  # no list is an entry
        assert entry["properties"]["id"]["x-kubernetes-int-or-string"] is True
        assert item["properties"]["filter"]["x-kubernetes-preserve-unknown-fields"] is True
        # CEL cannot see `users`: per-kind presence is OpenAPI anyOf, named in the error.
        junctors = [branch for j in item["allOf"] for branch in j["anyOf"]]
        assert {"required": ["kind", "users"], "properties": {"kind": {"minLength": 1}}} in junctors
        assert {"properties": {"kind": {"enum": ["inline"]}}} in junctors


def test_a_frequency_cap_is_refused_among_the_sources_by_the_api_server() -> None:
    audience = _schema()["properties"]["spec"]["properties"]["audience"]
    rules = {r["rule"]: r for r in audience["x-kubernetes-validations"]}
    rule = rules["self.sources.all(s, s.kind != 'recentlySent')"]
    assert rule["fieldPath"] == ".sources" and "exclusion only" in rule["message"]
    within = audience["properties"]["exclude"]["items"]["properties"]["within"]
    assert within["type"] == "string" and within["pattern"].startswith("^([0-9]+d)?")


def test_preserve_unknown_fields_only_where_free_form() -> None:
    found: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("x-kubernetes-preserve-unknown-fields"):
            found.append(path)
        for name, prop in node.get("properties", {}).items():
            walk(prop, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    walk(_schema(), "")
    free = [
        f".spec.audience.{key}[].{field}"
        for key in ("sources", "exclude")
        for field in ("users[]", "filter", "projection")
    ] + [".spec.message.settings"]
    assert set(free) <= set(found)
    # Below a filter: the query levels the CRD types (their user fields are free).
    assert [p for p in found if not any(p == f or p.startswith(f + ".") for f in free)] == []


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, prop in node.get("properties", {}).items():
        yield from _nodes(prop, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from _nodes(node["items"], f"{path}[]")


def test_every_free_string_list_and_map_of_the_spec_is_bounded() -> None:
    # Unbounded input hits only generic limits (etcd, the request size), by luck; and
    # the API server refuses a CEL rule whose cost it cannot bound.
    unbounded = []
    for path, node in _nodes(_schema()["properties"]["spec"], "spec"):
        kind = node.get("type")
        if any(r["rule"] == "false" for r in node.get("x-kubernetes-validations", [])):
            continue  # refused whatever it holds
        if kind == "string" and "enum" not in node and "maxLength" not in node:
            unbounded.append(path)
        elif kind == "array" and "maxItems" not in node:
            unbounded.append(path)
        elif kind == "object" and "properties" not in node and "maxProperties" not in node:
            unbounded.append(path)
    assert unbounded == []


def test_bounds_chosen_in_the_issue() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    template = spec["message"]["properties"]["template"]["properties"]
    assert template["body"]["maxLength"] == 64 * 1024
    assert spec["audience"]["properties"]["shards"]["default"] == 256


def test_query_levels_refuse_javascript_by_cel() -> None:
    source = _schema()["properties"]["spec"]["properties"]["audience"]["properties"]["sources"]
    level = source["items"]["properties"]["filter"]
    for depth in range(models.QUERY_CEL_DEPTH + 1):
        for op in mongoquery.JAVASCRIPT:
            (rule,) = level["properties"][op]["x-kubernetes-validations"]
            assert rule["rule"] == "false" and op in rule["message"]
        if depth < models.QUERY_CEL_DEPTH:
            assert {"$and", "$or", "$nor"} <= set(level["properties"])
            level = level["properties"]["$or"]["items"]
    assert "$or" not in level["properties"]  # deeper: the models' allow-list only


def test_map_keys_become_cel_rules() -> None:
    extra = _schema()["properties"]["spec"]["properties"]["message"]["properties"]["template"]
    (rule,) = extra["properties"]["extra"]["x-kubernetes-validations"]
    assert rule == {
        "rule": "self.all(k, size(k) >= 1 && size(k) <= 256)",
        "message": "every key must be 1-256 characters",
    }


def test_rules_match_the_models() -> None:
    message = _schema()["properties"]["spec"]["properties"]["message"]
    assert [r["rule"] for r in message["x-kubernetes-validations"]] == [
        r.rule for r in models.Message.__cel__
    ]
    run = _schema()["properties"]["spec"]["properties"]["run"]
    assert run["x-kubernetes-validations"] == [models.RUN_RULE.to_crd()]
    cron = _schema()["properties"]["spec"]["properties"]["schedule"]["properties"]["cron"]
    assert cron["x-kubernetes-validations"][0]["rule"] == f"self.matches({schedule.CRON_PATTERN!r})"


def _api_models() -> list[type[models.ApiModel]]:
    seen: list[type[models.ApiModel]] = []
    todo: list[type[models.ApiModel]] = [models.ApiModel]
    while todo:
        for sub in todo.pop().__subclasses__():
            seen.append(sub)
            todo.append(sub)
    return seen


def test_every_rule_of_the_models_is_in_the_crd() -> None:
    text = json.dumps(_schema())
    ruled = [m for m in _api_models() if m.__cel__]
    assert {m.__name__ for m in ruled} >= {"Message", "BackoffPolicy", "Window", "Schedule"}
    for model in ruled:
        for rule in model.__cel__:
            # Rules of a source kind are guarded by the kind in the merged source object.
            assert json.dumps(rule.rule)[1:-1] in text, (model.__name__, rule.rule)
            assert json.dumps(rule.message)[1:-1] in text, (model.__name__, rule.message)


def test_exclusive_minimum_is_openapi_v3() -> None:
    rate = _schema()["properties"]["spec"]["properties"]["rate"]["properties"]["perSecond"]
    assert (rate["minimum"], rate["exclusiveMinimum"]) == (0, True)


def _apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """The API server's structural defaulting, enough for this schema."""
    if isinstance(obj, dict):
        for name, prop in schema.get("properties", {}).items():
            if name not in obj and "default" in prop:
                obj[name] = copy.deepcopy(prop["default"])
            if name in obj:
                obj[name] = _apply_defaults(obj[name], prop)
    elif isinstance(obj, list) and "items" in schema:
        return [_apply_defaults(v, schema["items"]) for v in obj]
    return obj


def _numbers_as_float(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _numbers_as_float(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers_as_float(v) for v in obj]
    if isinstance(obj, int) and not isinstance(obj, bool):
        return float(obj)
    return obj


def test_crd_defaults_equal_model_defaults() -> None:
    minimal = {
        "audience": {"sources": [{"kind": "inline", "users": ["u1"]}]},
        "message": {"webhook": {"url": "https://x"}, "template": {"body": "b"}},
        "schedule": {"windows": [{"from": "09:00", "to": "17:00"}]},
    }
    server = _apply_defaults(copy.deepcopy(minimal), _schema()["properties"]["spec"])
    python = PushTaskSpec.model_validate(minimal).model_dump(
        by_alias=True, mode="json", exclude_none=True
    )
    assert _numbers_as_float(server) == _numbers_as_float(python)


def test_cron_pattern_is_the_python_check() -> None:
    regex = re.compile(schedule.CRON_PATTERN)
    for expr in ("0 9 * * Mon-Fri", "*/5 * * * *", "@daily", "0 0 1,15 * *", "0 22 * * 0"):
        assert regex.match(expr) and schedule.is_valid_cron(expr), expr
    for expr in ("0 9 * *", "0 0 9 * * *", "61 * * * *", "* 24 * * *", "daily", ""):
        assert not regex.match(expr) and not schedule.is_valid_cron(expr), expr


def test_generator_cli_prints_the_crd_and_the_reference(capsys: Any) -> None:
    assert crdgen.main([]) == 0
    assert capsys.readouterr().out == crdgen.crd_yaml()
    assert crdgen.main(["--reference"]) == 0
    out = capsys.readouterr().out
    assert "| `spec.workers` | integer |" in out
    assert "spec.message.webhook is required when spec.message.channel is webhook" in out


def test_reference_documents_the_limits_and_the_query_allow_list() -> None:
    text = crdgen.reference_markdown()
    limits = text[text.index("## Limits") :]
    assert "| `message.template.body`, each of `extra` | 64 KiB |" in limits
    assert all(f"`{op}`" in limits for op in (*mongoquery.ALLOWED, *mongoquery.JAVASCRIPT))
    assert "QueryRefused" in limits and "Local" in limits
