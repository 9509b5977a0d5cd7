"""Generate the PushTask CRD (and its field reference) from the pydantic models.

    python -m pushtask.crdgen > crds/pushtask.yaml
    python -m pushtask.crdgen --reference > docs/reference.md

pydantic's JSON schema is the starting point. The translation to a structural OpenAPI v3
schema: `$ref`s are inlined, titles dropped, `Optional[X]` becomes X (absent = unset),
`exclusiveMinimum: n` becomes `minimum: n, exclusiveMinimum: true`, `const` becomes a
one-value enum, free-form dicts get `x-kubernetes-preserve-unknown-fields`, and a
discriminated union (audience sources) becomes ONE object: the union of the variants'
properties, `kind` as an enum, and CEL rules per kind for what each variant requires,
restricts and forbids. Anything else the translation does not know fails loudly.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from pushtask import models, mongoquery

JsonObj = dict[str, Any]

# Keys copied as they are: their meaning is the same in JSON schema and OpenAPI v3.
_PLAIN_KEYS = frozenset(
    {
        "type", "format", "description", "default", "enum", "pattern", "required",
        "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
        "minProperties", "maxProperties", "multipleOf",
    }
)  # fmt: skip
_DROPPED_KEYS = frozenset({"title", "examples", "uniqueItems"})


class CrdGenError(ValueError):
    """The models use a JSON-schema construct that has no structural translation."""


def _merge(base: JsonObj, extra: JsonObj) -> JsonObj:
    """`extra` (a field's own keys) over `base` (the type's schema); CEL rules add up."""
    out = dict(base)
    for key, value in extra.items():
        if key == "x-kubernetes-validations":
            out[key] = [*out.get(key, []), *value]
        else:
            out[key] = value
    return out


class _Translator:
    def __init__(self, defs: dict[str, JsonObj]) -> None:
        self.defs = defs

    def node(self, node: JsonObj) -> JsonObj:
        node = dict(node)
        if node.get("default", 0) is None:
            del node["default"]  # Optional's `default: null` means "absent"
        if "$ref" in node:
            target = self.defs[node.pop("$ref").rsplit("/", 1)[-1]]
            return _merge(self.node(target), self.node(node))
        if "oneOf" in node or "anyOf" in node:
            return self.union(node)
        if "allOf" in node:
            (only,) = node.pop("allOf")
            return _merge(self.node(only), self.node(node))
        out: JsonObj = {}
        for key, value in node.items():
            if key in _PLAIN_KEYS or key.startswith("x-kubernetes-"):
                out[key] = value
            elif key in _DROPPED_KEYS:
                continue
            elif key == "const":
                out["enum"] = [value]
            elif key in ("exclusiveMinimum", "exclusiveMaximum"):
                out[key.replace("exclusiveM", "m")] = value
                out[key] = True
            elif key == "properties":
                out[key] = {name: self.node(prop) for name, prop in value.items()}
            elif key == "items":
                out[key] = self.node(value)
            elif key == "not":
                out[key] = self.node(value)  # a value validation (structural inside)
            elif key == "propertyNames":
                rules = out.setdefault("x-kubernetes-validations", [])
                rules.append(_property_names_rule(value))
            elif key == "additionalProperties":
                if value is True:  # dict[str, Any]: free-form
                    out["x-kubernetes-preserve-unknown-fields"] = True
                elif isinstance(value, dict):
                    out[key] = self.node(value)
                # False (extra="forbid"): structural schemas prune; strict field
                # validation (kubectl's default) rejects unknown fields.
            else:
                raise CrdGenError(f"no structural translation for {key!r} in {node}")
        if (
            out.get("type") == "object"
            and "properties" not in out
            and "additionalProperties" not in out
        ):
            out["x-kubernetes-preserve-unknown-fields"] = True
        return out

    def union(self, node: JsonObj) -> JsonObj:
        options = node.pop("oneOf", None) or node.pop("anyOf")
        discriminator = node.pop("discriminator", None)
        options = [o for o in options if o.get("type") != "null"]
        if discriminator is None:
            if len(options) != 1:
                raise CrdGenError(f"a non-discriminated union is not structural: {options}")
            return _merge(self.node(options[0]), self.node(node))
        merged = _merge_variants(discriminator["propertyName"], [self.node(o) for o in options])
        return _merge(merged, self.node(node))


def _property_names_rule(names: JsonObj) -> JsonObj:
    """Map keys constrained by the models (`dict[FieldName, ...]`) as a CEL rule."""
    names = dict(names)
    checks: list[str] = []
    words: list[str] = []
    low, high = names.pop("minLength", None), names.pop("maxLength", None)
    if low is not None:
        checks.append(f"size(k) >= {low}")
    if high is not None:
        checks.append(f"size(k) <= {high}")
    if low is not None or high is not None:
        words.append(f"{low or 0}-{high if high is not None else 'any'} characters")
    if "pattern" in names:
        pattern = names.pop("pattern")
        if '"' in pattern:
            raise CrdGenError(f"a key pattern with a double quote: {pattern!r}")
        checks.append(f'k.matches(r"{pattern}")')
        words.append(f"matching {pattern}")
    if names or not checks:
        raise CrdGenError(f"no CEL translation for propertyNames {names}")
    return {
        "rule": f"self.all(k, {' && '.join(checks)})",
        "message": "every key must be " + ", ".join(words),
    }


def _cel_visible(schema: JsonObj) -> bool:
    """Can CEL see this property? Untyped (preserve-unknown) nodes have no CEL type."""
    if "type" not in schema:
        return False
    return schema["type"] != "array" or _cel_visible(schema["items"])


def _cel_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v).replace('"', "'") for v in values) + "]"


def _merge_variants(tag: str, variants: list[JsonObj]) -> JsonObj:
    """Discriminated variants -> one structural object plus CEL rules per kind."""
    kinds = [v["properties"][tag]["enum"][0] for v in variants]
    names: list[str] = []
    for variant in variants:
        names += [n for n in variant["properties"] if n not in names]
    properties: JsonObj = {
        tag: {"type": "string", "enum": kinds, "description": "Source kind: " + ", ".join(kinds)}
    }
    rules: list[JsonObj] = []
    junctors: list[JsonObj] = []
    for name in names:
        if name == tag:
            continue
        having = [
            (k, v["properties"][name])
            for k, v in zip(kinds, variants, strict=True)
            if name in v["properties"]
        ]
        properties[name] = _merge_property(
            name, having, all_kinds=len(having) == len(kinds), rules=rules
        )
    for name in names:
        if name != tag and not _cel_visible(properties[name]):
            junctors += _invisible_field_rules(tag, kinds, variants, name, properties[name])
    for kind, variant in zip(kinds, variants, strict=True):
        guard = f"self.{tag} != '{kind}'"
        for req in variant.get("required", []):
            if req != tag and _cel_visible(properties[req]):
                rules.append(
                    {
                        "rule": f"{guard} || has(self.{req})",
                        "message": f"{req} is required when {tag} is {kind}",
                        "fieldPath": f".{req}",
                        "reason": "FieldValueRequired",
                    }
                )
        foreign = [
            n for n in names if n not in variant["properties"] and _cel_visible(properties[n])
        ]
        if foreign:
            allowed = ", ".join(n for n in variant["properties"])
            rules.append(
                {
                    "rule": f"{guard} || !({' || '.join(f'has(self.{n})' for n in foreign)})",
                    "message": f"{tag} {kind} takes only: {allowed}",
                }
            )
        for rule in variant.get("x-kubernetes-validations", []):
            rules.append({**rule, "rule": f"{guard} || ({rule['rule']})"})
    merged: JsonObj = {
        "type": "object",
        "required": [tag],
        "properties": properties,
        "x-kubernetes-validations": rules,
    }
    if junctors:
        merged["allOf"] = junctors
    return merged


def _invisible_field_rules(
    tag: str, kinds: list[str], variants: list[JsonObj], name: str, schema: JsonObj
) -> list[JsonObj]:
    """Per-kind "required" and "forbidden" for a property CEL cannot see (untyped items).

    OpenAPI value validation does it instead: anyOf(the rule holds, the kind is another
    one). The API server reports the failed branch that matched most, so the rule's
    branch also matches `kind` (always true) and wins: its error names the field
    ("users: Required value", "users: Too many ... at most 0 items").
    """
    always = {tag: {"minLength": 1}}  # true for every kind: it only adds to the match count
    out: list[JsonObj] = []
    having = [k for k, v in zip(kinds, variants, strict=True) if name in v["properties"]]
    needing = [k for k, v in zip(kinds, variants, strict=True) if name in v.get("required", [])]
    if needing:
        others = [k for k in kinds if k not in needing]
        rule: JsonObj = {"required": [tag, name], "properties": always}
        out.append({"anyOf": [rule, {"properties": {tag: {"enum": others}}}]})
    if len(having) < len(kinds):
        if schema.get("type") != "array":
            raise CrdGenError(f"cannot forbid the untyped non-list property {name!r} per kind")
        rule = {"required": [tag], "properties": {**always, name: {"maxItems": 0}}}
        out.append({"anyOf": [rule, {"properties": {tag: {"enum": having}}}]})
    return out


def _merge_property(
    name: str, having: list[tuple[str, JsonObj]], *, all_kinds: bool, rules: list[JsonObj]
) -> JsonObj:
    """One property shared by several variants; per-kind differences become CEL rules."""

    def core(s: JsonObj) -> JsonObj:
        return {k: v for k, v in s.items() if k not in ("default", "description", "enum")}

    first = having[0][1]
    if any(core(s) != core(first) for _, s in having):
        raise CrdGenError(f"source property {name!r} differs between kinds: {having}")
    out = core(first)
    descriptions = {s.get("description") for _, s in having}
    if len(descriptions) == 1:
        out["description"] = descriptions.pop() or ""
    else:
        out["description"] = " ".join(f"({k}) {s.get('description', '')}" for k, s in having)
    defaults = [(k, s["default"]) for k, s in having if "default" in s]
    if (
        defaults
        and all_kinds
        and len(defaults) == len(having)
        and len({json.dumps(d) for _, d in defaults}) == 1
    ):
        out["default"] = defaults[0][1]
    elif defaults:
        # A default in the merged object would land on every kind: state it instead;
        # the models apply it when they parse the spec.
        out["description"] += (
            " Default: " + ", ".join(f"{json.dumps(d)} ({k})" for k, d in defaults) + "."
        )
    enums = [(k, s.get("enum")) for k, s in having]
    if any(e is not None for _, e in enums):
        union: list[str] = []
        for _, e in enums:
            union += [v for v in e or [] if v not in union]
        out["enum"] = union
        for kind, e in enums:
            if e is not None and e != union:
                rules.append(
                    {
                        "rule": f"self.kind != '{kind}' || !has(self.{name}) || "
                        f"self.{name} in {_cel_list(e)}",
                        "message": f"{name} must be one of {', '.join(e)} when kind is {kind}",
                        "fieldPath": f".{name}",
                        "reason": "FieldValueInvalid",
                    }
                )
    return out


_KEY_ORDER = ("type", "format", "description", "required", "default", "enum", "rule", "message")


def _tidy(node: Any, *, drop_defaults: bool) -> Any:
    """Stable, readable key order (type, description first); optionally no defaults."""
    if isinstance(node, list):
        return [_tidy(v, drop_defaults=drop_defaults) for v in node]
    if not isinstance(node, dict):
        return node
    keys = [k for k in _KEY_ORDER if k in node] + sorted(k for k in node if k not in _KEY_ORDER)
    out = {}
    for key in keys:
        if drop_defaults and key == "default":
            continue
        value = node[key]
        if key in ("default", "enum"):
            pass  # data, not schema: keep as the models dump it
        elif key in ("properties", "additionalProperties", "items") or isinstance(
            value, dict | list
        ):
            # property names are data, not schema keys: keep their declared order
            value = (
                {n: _tidy(p, drop_defaults=drop_defaults) for n, p in value.items()}
                if key == "properties"
                else _tidy(value, drop_defaults=drop_defaults)
            )
        out[key] = value
    return out


def structural(model: type[models.BaseModel], *, defaults: bool = True) -> JsonObj:
    """The structural OpenAPI v3 schema of a model (`defaults=False`: none declared)."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    result: JsonObj = _tidy(_Translator(defs).node(schema), drop_defaults=not defaults)
    return result


def structural_problems(schema: JsonObj, path: str = "") -> list[str]:
    """Violations of the structural-schema rules (empty: the schema is structural)."""
    problems: list[str] = []
    free = schema.get("x-kubernetes-preserve-unknown-fields") or schema.get(
        "x-kubernetes-int-or-string"
    )
    if "type" not in schema and not free:
        problems.append(f"{path or '.'}: no type")
    for key in ("$ref", "oneOf", "title", "const"):
        if key in schema:
            problems.append(f"{path or '.'}: {key}")
    for junctor in [*schema.get("allOf", []), *filter(None, [schema.get("not")])]:
        problems += _junctor_problems(junctor, schema, f"{path}(allOf)")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{path}: properties with additionalProperties")
    for name, prop in schema.get("properties", {}).items():
        problems += structural_problems(prop, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += structural_problems(schema["additionalProperties"], f"{path}.*")
    if "items" in schema:
        problems += structural_problems(schema["items"], f"{path}[]")
    return problems


def _junctor_problems(node: JsonObj, outer: JsonObj, path: str) -> list[str]:
    """Inside allOf/anyOf/not: value validations only, on properties declared outside."""
    problems = [
        f"{path}: {key} inside a junctor"
        for key in ("type", "description", "default", "additionalProperties", "nullable")
        if key in node
    ]
    for name, prop in node.get("properties", {}).items():
        if name not in outer.get("properties", {}):
            problems.append(f"{path}.{name}: not declared outside the junctor")
        else:
            problems += _junctor_problems(prop, outer["properties"][name], f"{path}.{name}")
    subs = [*node.get("anyOf", []), *node.get("allOf", []), *filter(None, [node.get("not")])]
    for sub in subs:
        problems += _junctor_problems(sub, outer, path)
    return problems


PRINTER_COLUMNS: list[JsonObj] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Run", "type": "integer", "jsonPath": ".status.run"},
    {"name": "Sent", "type": "integer", "jsonPath": ".status.counts.sent"},
    {"name": "Total", "type": "integer", "jsonPath": ".status.counts.audience"},
    {
        "name": "Rate",
        "type": "number",
        "jsonPath": ".status.rate",
        "description": "Sends per second",
    },
    # Live workers (fresh heartbeats) are what is really sending; desired is in the spec.
    {"name": "Workers", "type": "integer", "jsonPath": ".status.workers.live"},
    {"name": "ETA", "type": "string", "jsonPath": ".status.eta", "priority": 1},
    # A run that tracks links (empty otherwise): what its campaign achieved, at a glance.
    {
        "name": "Clicks",
        "type": "integer",
        "jsonPath": ".status.clicks",
        "priority": 1,
        "description": "Clicks (unique recipient-link pairs) of a run that tracks links",
    },
    {
        "name": "CTR",
        "type": "string",
        "jsonPath": ".status.clickThrough",
        "priority": 1,
        "description": "Click-through: recipients who clicked, per sent message",
    },
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> JsonObj:
    """The CustomResourceDefinition, as a dict ready for YAML."""
    schema: JsonObj = {
        "type": "object",
        "description": "PushTask sends a message to every user of an audience, once per run.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": structural(models.PushTaskSpec),
            # Status is observed, never defaulted: the server must not invent values.
            "status": structural(models.PushTaskStatus, defaults=False),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{models.PLURAL}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": list(models.SHORT_NAMES),
                "categories": list(models.CATEGORIES),
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.workers",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


HEADER = "# Generated by `python -m pushtask.crdgen` from pushtask/models.py. Do not edit.\n"


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # shared sub-schemas are written out in full, never as &anchors


def crd_yaml() -> str:
    body = yaml.dump(crd(), Dumper=_NoAliasDumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


# --- field reference ------------------------------------------------------------------


def _type_of(schema: JsonObj) -> str:
    if "type" not in schema:
        return "any"
    kind = str(schema["type"])
    if kind == "array":
        return f"[]{_type_of(schema['items'])}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map[string]{_type_of(schema['additionalProperties'])}"
    if schema.get("format"):
        return f"{kind} ({schema['format']})"
    return kind


def _constraints(schema: JsonObj) -> str:
    parts: list[str] = []
    if "enum" in schema:
        parts.append(" | ".join(f"`{v}`" for v in schema["enum"]))
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None:
        parts.append(f"{'>' if schema.get('exclusiveMinimum') else '≥'} {low}")
    if high is not None:
        parts.append(f"≤ {high}")
    for key, label in (
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
    ):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    if schema.get("x-kubernetes-list-type") == "set":
        parts.append("no duplicates")
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        parts.append("free-form")
    return ", ".join(parts)


def _short(rule: str, limit: int = 160) -> str:
    # The cron regex runs to 1.5 kB: the CRD has it in full, the table only its start.
    return rule if len(rule) <= limit else rule[: limit - 1] + "…"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(
    schema: JsonObj, path: str, required: bool, out: list[str], rules: list[tuple[str, JsonObj]]
) -> None:
    if path:
        default = f"`{json.dumps(schema['default'])}`" if "default" in schema else ""
        req = "yes" if required else ""
        out.append(
            f"| `{path}` | {_type_of(schema)} | {req} | {default} | "
            f"{_cell(_constraints(schema))} | {_cell(schema.get('description', ''))} |"
        )
    for rule in schema.get("x-kubernetes-validations", []):
        rules.append((path or "(root)", rule))
    node = schema["items"] if schema.get("type") == "array" and "items" in schema else schema
    suffix = "[]" if node is not schema else ""
    if node is not schema:
        for rule in node.get("x-kubernetes-validations", []):
            rules.append((path + suffix, rule))
    for name, prop in node.get("properties", {}).items():
        _rows(
            prop,
            f"{path}{suffix}.{name}" if path else name,
            name in node.get("required", []),
            out,
            rules,
        )


def reference_markdown() -> str:
    """docs/reference.md: every spec and status field, from the generated schema."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    out = [
        "# PushTask field reference",
        "",
        "<!-- Generated by `python -m pushtask.crdgen --reference` from pushtask/models.py."
        " Do not edit. -->",
        "",
        f"`apiVersion: {models.API_VERSION}`, `kind: {models.KIND}` (plural "
        f"`{models.PLURAL}`, short name `{', '.join(models.SHORT_NAMES)}`), namespaced.",
        "Field names are camelCase in YAML; the Python models use snake_case.",
        "A source under `audience.sources`/`audience.exclude` is one object whose `kind`",
        "decides which fields apply; the rules below say which.",
        "",
    ]
    for part in ("spec", "status"):
        rows: list[str] = []
        rules: list[tuple[str, JsonObj]] = []
        _rows(schema[part], "", False, rows, rules)
        out += [
            f"## {part}",
            "",
            "| Field | Type | Required | Default | Constraints | Description |",
            "| --- | --- | --- | --- | --- | --- |",
            *[r.replace("| `", f"| `{part}.", 1) for r in rows],
            "",
        ]
        if rules:
            out += [
                f"### {part}: validation rules (CEL, checked by the API server and by the models)",
                "",
                "| On | Rule | Message |",
                "| --- | --- | --- |",
            ]
            out += [
                f"| `{part}{'.' + p if p != '(root)' else ''}` | `{_cell(_short(r['rule']))}` | "
                f"{_cell(r['message'])} |"
                for p, r in rules
            ]
            out.append("")
    out.append(limits_markdown())
    return "\n".join(out)


def _limit_rows() -> list[tuple[str, str, str]]:
    m, q = models, mongoquery
    kib = m.MAX_TEMPLATE_LENGTH // 1024
    return [
        ("`audience.sources`, `audience.exclude`", "64 each",
         "each source is planned and read on its own; more is a sign of a generated spec"),
        ("`users` of an inline source", f"{m.MAX_INLINE_USERS:,}",
         "the spec is stored in etcd and copied into every run; a larger audience goes "
         "into a configMap, url or mongo source, which workers read in ranges (the API "
         "server's message is its generic 'must have at most 10000 items')"),
        ("user id (inline, or `id` of an object)",
         f"1-{m.MAX_ID_LENGTH} characters, no control characters (C0, DEL, C1)",
         "ids go into keys, logs and terminals; NUL, CR/LF and ESC corrupt them"),
        ("attributes of an inline user object", f"{m.MAX_ATTRIBUTES}, `id` included",
         "templates need a few; the spec is stored in etcd and copied into the run"),
        ("`message.template.body`, each of `extra`", f"{kib} KiB",
         "a message, not a payload: etcd holds the whole object (1.5 MiB by default)"),
        ("`message.template.title`", f"{m.MAX_TITLE_LENGTH} characters", "a subject line"),
        ("`message.template.link`", f"{m.MAX_LINK_LENGTH} characters",
         "URLs longer than 8 KiB are refused by common servers"),
        ("`message.template.extra`", f"{m.MAX_EXTRA_FIELDS} fields", "as above"),
        ("`message.webhook.headers`",
         f"{m.MAX_HEADERS} headers; names are RFC 9110 tokens of at most 256 characters; "
         f"values at most {m.MAX_HEADER_VALUE_LENGTH} characters without CR, LF or other "
         "control characters (a tab is allowed)",
         "CR/LF would end the header line (a run that can never send, or a smuggled "
         "header); servers commonly cap a header line at 8 KiB"),
        ("`message.settings` (plugin channels)", f"{m.MAX_SETTINGS} keys", "free-form"),
        ("`url` source `columns`", f"{m.MAX_COLUMNS} entries, names 1-256 characters",
         "one per column of a CSV file"),
        ("`schedule.windows`", "32", "a week of windows several times over"),
        ("`schedule.cron`", "128 characters; every field and step range-checked "
         "(`*/0`, `*/60` refused)", "a step of 0 never fires; beyond the span, once"),
        ("time zones", "IANA names, not `Local`/`localtime`/empty",
         "those mean the API server's or operator's own zone, which differ"),
        ("`schedule.startAt`", "RFC 3339 with an offset within ±14:00",
         "the widest offset in use (UTC+14:00, Kiribati)"),
        ("`spec.run`, `failureThreshold.minSample`", "at most 1,000,000,000", "integers"),
        ("query document (`filter`, `projection`, each nested query)",
         f"{q.MAX_KEYS} keys; `$and`/`$or`/`$nor` at most {q.MAX_LOGICAL_ITEMS} queries; "
         f"nesting at most {q.MAX_DEPTH} deep, {q.MAX_NODES:,} values in all",
         "keeps the check, the run document and the logs small"),
        ("`$regex`", f"{q.MAX_REGEX_LENGTH} characters; `$options` of "
         f"{''.join(sorted(q.REGEX_OPTIONS))}", "the server compiles and runs it per document"),
    ]  # fmt: skip


def limits_markdown() -> str:
    """The bounds of the API and why they are where they are (docs/reference.md)."""
    q = mongoquery
    out = [
        "## Limits",
        "",
        "Every free string, list and map of the spec is bounded, so a careless or hostile",
        "manifest is refused by the API server naming the field, instead of hitting a",
        "generic limit by luck (kubectl's 256 KiB annotation, the 3 MiB request, etcd's",
        "object size). The models check the same bounds (`kubectl push`, operator, workers).",
        "",
        "| What | Bound | Why |",
        "| --- | --- | --- |",
        *[f"| {a} | {_cell(b)} | {_cell(c)} |" for a, b, c in _limit_rows()],
        "",
        "### MongoDB queries",
        "",
        "A `mongo` source's (or exclusion's) `filter` uses only these operators, at any",
        "depth: " + ", ".join(f"`{o}`" for o in sorted(q.ALLOWED)) + ".",
        "Anything else is refused, in particular "
        + ", ".join(f"`{o}`" for o in q.JAVASCRIPT)
        + " (they run JavaScript or",
        "aggregation expressions in the database), and `$`-keys inside plain values.",
        "A `projection` maps fields to 0/1/true/false, `{$slice: n}`, `{$slice: [skip, n]}`",
        "or `{$elemMatch: query}`: a string or an expression would be computed by the",
        "server (MongoDB 4.4+), which can reach `$function`.",
        "",
        "Who refuses what:",
        "",
        f"- the API server (CEL): the JavaScript operators at the root of a filter and in"
        f" `$and`/`$or`/`$nor` up to {models.QUERY_CEL_DEPTH} levels deep (a filter is"
        " free-form, and CEL gets no view of untyped documents);",
        "- the models (`kubectl push`), the operator before every run (the task goes"
        " `Failed`, reason `QueryRefused`, with the path of the refused operator, such as"
        " `spec.audience.sources[1].filter.$or[0].$where`) and the workers before any"
        " query is sent: the whole allow-list at every depth.",
        "",
        "### What the API server cannot check",
        "",
        "- An inline user entry is a string or an object, which a structural schema cannot",
        "  type: the CRD carries the rules of each JSON type on one untyped node (string",
        "  length and characters, a required `id`, no lists, fractions or booleans);",
        "  `null` as an entry passes the API server and is refused by the models (the",
        "  operator fails the task as `InvalidSpec`).",
        "- For the same reason CEL cannot see `users`; that it is required on the inline",
        "  kind and forbidden on the others is OpenAPI `anyOf`, reported as",
        "  `users: Required value` or `users: Too many ... at most 0 items`.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pushtask.crdgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="print the Markdown field reference instead of the CRD",
    )
    args = parser.parse_args(argv)
    sys.stdout.write(reference_markdown() if args.reference else crd_yaml())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
