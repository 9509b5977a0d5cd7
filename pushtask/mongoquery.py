"""The allow-list of MongoDB query operators a spec may use in `filter` and `projection`.

A PushTask's author is not the database's owner: a filter is data from the API, and it
must never run code in the database. MongoDB runs JavaScript through `$where`,
`$function` and `$accumulator`, and `$expr` opens the whole aggregation language (where
`$function` lives); an allow-list rather than a deny-list means an operator added by a
later MongoDB release is refused until someone has looked at it.

`refusal(doc, kind)` walks a document and returns the first thing it refuses, with its
JSON path ("filter.$or[1].$where"); `check(doc, kind)` raises `QueryRefused` with it.
Pure functions: the models, the operator and the workers all call them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# Query-level operators: their value is a list of queries.
LOGICAL = frozenset({"$and", "$or", "$nor"})
# Field-level operators whose value is a literal (compared, never evaluated).
COMPARISON = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"})
ELEMENT = frozenset({"$exists", "$type"})
ARRAY = frozenset({"$all", "$elemMatch", "$size"})
REGEX = frozenset({"$regex", "$options"})
FIELD_OPERATORS = COMPARISON | ELEMENT | ARRAY | REGEX | {"$not"}
ALLOWED = LOGICAL | FIELD_OPERATORS

# Named in messages and documentation; refused like any other operator not allowed.
JAVASCRIPT = ("$where", "$function", "$accumulator", "$expr")

# Bounds: a regex is compiled and run per document by the server (a long one is slow and
# a sign of abuse); nesting and size keep the walk, the run document and logs small.
MAX_REGEX_LENGTH = 1024
MAX_DEPTH = 16
MAX_NODES = 2000
MAX_KEYS = 64  # keys of one query document (the CRD's maxProperties too)
MAX_LOGICAL_ITEMS = 64  # queries in one $and/$or/$nor (the CRD's maxItems too)
REGEX_OPTIONS = frozenset("imsxu")

Kind = Literal["filter", "projection"]


@dataclass(frozen=True)
class Refusal:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class QueryRefused(ValueError):
    """A filter or projection uses something outside the allow-list."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal

    @property
    def path(self) -> str:
        return self.refusal.path


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _operator_reason(op: str) -> str:
    if op in JAVASCRIPT:
        return (
            f"operator {op} is not allowed: it runs code in the database "
            "(no JavaScript or aggregation expressions in a spec)"
        )
    return f"operator {op} is not allowed (allowed: {', '.join(sorted(ALLOWED))})"


class _Walk:
    def __init__(self) -> None:
        self.nodes = 0

    def _count(self, path: str, depth: int) -> Refusal | None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            return Refusal(path, f"too large: more than {MAX_NODES} values")
        if depth > MAX_DEPTH:
            return Refusal(path, f"nested more than {MAX_DEPTH} deep")
        return None

    def query(self, doc: Any, path: str, depth: int) -> Refusal | None:
        """A query document: field conditions and logical operators."""
        if found := self._count(path, depth):
            return found
        if not isinstance(doc, Mapping):
            return Refusal(path, "must be an object (a query document)")
        if len(doc) > MAX_KEYS:
            return Refusal(path, f"a query document has at most {MAX_KEYS} keys")
        for key, value in doc.items():
            where = _key(path, str(key))
            if not isinstance(key, str) or not key:
                return Refusal(where, "field names must be non-empty strings")
            if key.startswith("$"):
                if key not in LOGICAL:
                    return Refusal(where, _operator_reason(key))
                if not isinstance(value, list) or not value:
                    return Refusal(where, f"{key} takes a non-empty list of queries")
                if len(value) > MAX_LOGICAL_ITEMS:
                    return Refusal(where, f"{key} takes at most {MAX_LOGICAL_ITEMS} queries")
                for i, sub in enumerate(value):
                    if found := self.query(sub, f"{where}[{i}]", depth + 1):
                        return found
            elif found := self.condition(value, where, depth + 1):
                return found
        return None

    def condition(self, value: Any, path: str, depth: int) -> Refusal | None:
        """The value of a field in a query: a literal, or a document of operators."""
        if isinstance(value, Mapping) and any(str(k).startswith("$") for k in value):
            return self.operators(value, path, depth)
        return self.literal(value, path, depth)

    def operators(self, doc: Mapping[str, Any], path: str, depth: int) -> Refusal | None:
        if found := self._count(path, depth):
            return found
        for key, value in doc.items():
            where = _key(path, str(key))
            if not str(key).startswith("$"):
                return Refusal(where, "an operator document must not mix in field names")
            if key not in FIELD_OPERATORS:
                return Refusal(where, _operator_reason(key))
            found = self.operand(key, value, where, depth + 1, doc)
            if found:
                return found
        return None

    def operand(
        self, op: str, value: Any, path: str, depth: int, doc: Mapping[str, Any]
    ) -> Refusal | None:
        if op in ("$in", "$nin", "$all"):
            if not isinstance(value, list):
                return Refusal(path, f"{op} takes a list")
            for i, item in enumerate(value):
                sub = f"{path}[{i}]"
                if op == "$all" and isinstance(item, Mapping) and "$elemMatch" in item:
                    found = self.operators(item, sub, depth + 1)
                else:
                    found = self.literal(item, sub, depth + 1)
                if found:
                    return found
            return None
        if op == "$elemMatch":
            # Either a query over the elements' fields or operators on the elements.
            if not isinstance(value, Mapping):
                return Refusal(path, "$elemMatch takes an object")
            if value and all(str(k).startswith("$") and k not in LOGICAL for k in value):
                return self.operators(value, path, depth)
            return self.query(value, path, depth)
        if op == "$not":
            if isinstance(value, Mapping):
                return self.operators(value, path, depth)
            return Refusal(path, "$not takes a document of operators")
        if op == "$regex":
            if not isinstance(value, str):
                return Refusal(path, "$regex takes a string")
            if len(value) > MAX_REGEX_LENGTH:
                return Refusal(path, f"a regex is at most {MAX_REGEX_LENGTH} characters")
            return None
        if op == "$options":
            if "$regex" not in doc:
                return Refusal(path, "$options needs $regex")
            if not isinstance(value, str) or not set(value) <= REGEX_OPTIONS:
                return Refusal(path, f"$options takes letters of {''.join(sorted(REGEX_OPTIONS))}")
            return None
        if op == "$size":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return Refusal(path, "$size takes a non-negative integer")
            return None
        if op == "$exists":
            if not isinstance(value, bool | int):
                return Refusal(path, "$exists takes true or false")
            return None
        if op == "$type":
            items = value if isinstance(value, list) else [value]
            if not items or not all(isinstance(t, str | int) for t in items):
                return Refusal(path, "$type takes a type name or number, or a list of them")
            return None
        return self.literal(value, path, depth)

    def literal(self, value: Any, path: str, depth: int) -> Refusal | None:
        """A value compared as it is. No `$` keys inside: the server would read some of
        them as operators in some positions, and none is needed in plain data."""
        if found := self._count(path, depth):
            return found
        if isinstance(value, Mapping):
            for key, item in value.items():
                where = _key(path, str(key))
                if str(key).startswith("$"):
                    return Refusal(where, _operator_reason(str(key)))
                if found := self.literal(item, where, depth + 1):
                    return found
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if found := self.literal(item, f"{path}[{i}]", depth + 1):
                    return found
        elif not (value is None or isinstance(value, str | int | float | bool)):
            return Refusal(path, f"a value of type {type(value).__name__} is not allowed")
        return None

    def projection(self, doc: Any, path: str) -> Refusal | None:
        """Inclusion or exclusion of fields: 0/1/true/false, or $slice/$elemMatch.

        A string or an expression document would be an aggregation expression (MongoDB
        4.4+ computes projected fields), which can reach `$function`.
        """
        if found := self._count(path, 0):
            return found
        if not isinstance(doc, Mapping):
            return Refusal(path, "must be an object (a projection)")
        if len(doc) > MAX_KEYS:
            return Refusal(path, f"a projection has at most {MAX_KEYS} keys")
        for key, value in doc.items():
            where = _key(path, str(key))
            if not isinstance(key, str) or not key or key.startswith("$"):
                return Refusal(where, "projected field names must not start with $")
            if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
                continue
            if isinstance(value, Mapping) and len(value) == 1:
                ((op, arg),) = value.items()
                sub = _key(where, str(op))
                if op == "$slice" and _is_slice(arg):
                    continue
                if op == "$elemMatch":
                    if found := self.query(arg, sub, 1):
                        return found
                    continue
                if op in ("$slice",):
                    return Refusal(sub, "$slice takes an integer or [skip, limit]")
                return Refusal(sub, _operator_reason(str(op)))
            return Refusal(where, "a projection value is 0, 1, true, false, $slice or $elemMatch")
        return None


def _is_slice(arg: Any) -> bool:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(arg):
        return True
    return isinstance(arg, list) and len(arg) == 2 and all(is_int(v) for v in arg)


def refusal(doc: Any, kind: Kind, path: str | None = None) -> Refusal | None:
    """The first part of `doc` outside the allow-list, or None if all of it is allowed."""
    walk = _Walk()
    where = kind if path is None else path
    return walk.query(doc, where, 0) if kind == "filter" else walk.projection(doc, where)


def check(doc: Any, kind: Kind, path: str | None = None) -> None:
    """Raise `QueryRefused` (with the JSON path) at the first refused part of `doc`."""
    found = refusal(doc, kind, path)
    if found is not None:
        raise QueryRefused(found)


def check_source(source: Mapping[str, Any], path: str) -> None:
    """Check a mongo source's `filter` and `projection` (a raw spec dict, any kind)."""
    if source.get("kind") != "mongo":
        return
    if source.get("filter") is not None:
        check(source["filter"], "filter", f"{path}.filter")
    if source.get("projection") is not None:
        check(source["projection"], "projection", f"{path}.projection")


__all__ = [
    "ALLOWED",
    "JAVASCRIPT",
    "MAX_DEPTH",
    "MAX_KEYS",
    "MAX_LOGICAL_ITEMS",
    "MAX_NODES",
    "MAX_REGEX_LENGTH",
    "QueryRefused",
    "Refusal",
    "check",
    "check_source",
    "refusal",
]
