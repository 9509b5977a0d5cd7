"""The allow-list of MongoDB query operators: what passes, what is refused, and where."""

from __future__ import annotations

from typing import Any

import pytest

from pushtask import mongoquery
from pushtask.mongoquery import QueryRefused, check, check_source, refusal

JS = "function() { return true; }"


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"plan": "pro", "age": 30, "vip": True, "deleted": None},
        {"age": {"$gte": 18, "$lt": 65}, "plan": {"$in": ["pro", "team"], "$ne": "free"}},
        {"$or": [{"a": 1}, {"$and": [{"b": {"$exists": True}}, {"c": {"$type": "string"}}]}]},
        {"$nor": [{"a": {"$nin": [1, 2]}}]},
        {"name": {"$regex": "^A.*", "$options": "im"}},
        {"score": {"$not": {"$lt": 5}}},
        {"name": {"$not": {"$regex": "^test"}}},
        {"tags": {"$all": ["a", "b"], "$size": 2}},
        {"tags": {"$elemMatch": {"$eq": "news"}}},
        {"orders": {"$elemMatch": {"total": {"$gt": 100}, "$or": [{"x": 1}, {"y": 2}]}}},
        {"items": {"$all": [{"$elemMatch": {"qty": {"$gt": 5}}}]}},
        {"address": {"city": "Berlin", "zip": "10115"}},  # an embedded document, literally
        {"a.b.c": {"$eq": [1, {"x": 2}]}},
    ],
)
def test_allowed_filters_pass(query: dict[str, Any]) -> None:
    assert refusal(query, "filter") is None
    check(query, "filter")


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ({"$where": JS}, "filter.$where"),
        ({"$expr": {"$gt": ["$a", "$b"]}}, "filter.$expr"),
        ({"$function": {"body": JS}}, "filter.$function"),
        ({"$accumulator": {"init": JS}}, "filter.$accumulator"),
        ({"$or": [{"a": 1}, {"$where": JS}]}, "filter.$or[1].$where"),
        ({"$and": [{"$or": [{"$nor": [{"$expr": {}}]}]}]}, "filter.$and[0].$or[0].$nor[0].$expr"),
        ({"tags": {"$elemMatch": {"$where": JS}}}, "filter.tags.$elemMatch.$where"),
        ({"o": {"$elemMatch": {"a": 1, "$where": JS}}}, "filter.o.$elemMatch.$where"),
        ({"age": {"$not": {"$expr": {}}}}, "filter.age.$not.$expr"),
        ({"a": {"$function": {"body": JS}}}, "filter.a.$function"),
        ({"a": {"$eq": {"$where": JS}}}, "filter.a.$eq.$where"),  # no $ keys in data
        ({"a": {"x": {"$accumulator": {}}}}, "filter.a.x.$accumulator"),
        ({"a": {"$in": [1, {"$function": {}}]}}, "filter.a.$in[1].$function"),
        (
            {"items": {"$all": [{"$elemMatch": {"$where": JS}}]}},
            "filter.items.$all[0].$elemMatch.$where",
        ),
        ({"a": {"$mod": [2, 0]}}, "filter.a.$mod"),  # not on the list: refused
        ({"$text": {"$search": "x"}}, "filter.$text"),
        ({"$jsonSchema": {}}, "filter.$jsonSchema"),
        ({"$comment": "hi"}, "filter.$comment"),
        ({"name": {"$regex": "a" * 1025}}, "filter.name.$regex"),
        ({"name": {"$regex": 5}}, "filter.name.$regex"),
        ({"name": {"$options": "i"}}, "filter.name.$options"),
        ({"name": {"$regex": "a", "$options": "e"}}, "filter.name.$options"),
        ({"a": {"$gt": 1, "b": 2}}, "filter.a.b"),  # operators mixed with a field
        ({"$or": []}, "filter.$or"),
        ({"$or": {"a": 1}}, "filter.$or"),
        ({"$or": [{"a": i} for i in range(65)]}, "filter.$or"),
        ({"$or": ["a"]}, "filter.$or[0]"),
        ({"a": {"$size": -1}}, "filter.a.$size"),
        ({"a": {"$not": 5}}, "filter.a.$not"),
        ({f"k{i}": i for i in range(65)}, "filter"),
        ([{"a": 1}], "filter"),
    ],
)
def test_refused_filters_name_the_path(query: Any, path: str) -> None:
    found = refusal(query, "filter")
    assert found is not None and found.path == path, found
    with pytest.raises(QueryRefused) as info:
        check(query, "filter")
    assert info.value.path == path and str(info.value).startswith(f"{path}: ")


def test_javascript_operators_say_why() -> None:
    found = refusal({"$or": [{"$where": JS}]}, "filter")
    assert found is not None and "runs code in the database" in found.reason


def test_depth_and_size_are_bounded() -> None:
    deep: dict[str, Any] = {"a": 1}
    for _ in range(mongoquery.MAX_DEPTH + 1):
        deep = {"$and": [deep]}
    found = refusal(deep, "filter")
    assert found is not None and "deep" in found.reason
    wide = {"a": {"$in": list(range(mongoquery.MAX_NODES + 1))}}
    found = refusal(wide, "filter")
    assert found is not None and "too large" in found.reason


@pytest.mark.parametrize(
    "projection",
    [{}, {"name": 1, "email": True, "_id": 0}, {"tags": {"$slice": 5}},
     {"tags": {"$slice": [2, 3]}}, {"orders": {"$elemMatch": {"total": {"$gt": 5}}}}],
)  # fmt: skip
def test_allowed_projections_pass(projection: dict[str, Any]) -> None:
    assert refusal(projection, "projection") is None


@pytest.mark.parametrize(
    ("projection", "path"),
    [
        ({"x": "$password"}, "projection.x"),  # an aggregation expression
        ({"x": {"$function": {"body": JS}}}, "projection.x.$function"),
        ({"x": {"$concat": ["$a", "$b"]}}, "projection.x.$concat"),
        ({"x": {"$elemMatch": {"$where": JS}}}, "projection.x.$elemMatch.$where"),
        ({"x": {"$slice": "a"}}, "projection.x.$slice"),
        ({"x": 2}, "projection.x"),
        ({"$where": 1}, "projection.$where"),
        ({"x": {"$slice": 1, "$elemMatch": {}}}, "projection.x"),
    ],
)
def test_refused_projections_name_the_path(projection: dict[str, Any], path: str) -> None:
    found = refusal(projection, "projection")
    assert found is not None and found.path == path, found


def test_check_source_checks_mongo_sources_only() -> None:
    check_source({"kind": "inline", "filter": {"$where": JS}}, "spec.audience.sources[0]")
    check_source({"kind": "mongo", "collection": "u"}, "spec.audience.sources[0]")
    with pytest.raises(QueryRefused) as info:
        check_source(
            {"kind": "mongo", "filter": {"a": 1}, "projection": {"x": "$y"}},
            "spec.audience.exclude[2]",
        )
    assert info.value.path == "spec.audience.exclude[2].projection.x"


def test_an_empty_path_prefix_gives_relative_paths() -> None:
    found = refusal({"$or": [{"$where": JS}]}, "filter", path="")
    assert found is not None and found.path == "$or[0].$where"
