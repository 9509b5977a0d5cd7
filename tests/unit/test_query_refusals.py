"""A refused MongoDB query stops at the operator (task Failed, path named) and at the worker."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from pushtask_operator.settings import OperatorSettings
from pushtask_operator.validation import refused_query, validate
from pushtask_worker.audience import mongosource
from pushtask_worker.audience.rows import Columns
from pushtask_worker.audience.urlsource import SourceError

JS = "function() { return true; }"
SETTINGS = OperatorSettings(mongo_secret_name="mongo", worker_service_account="")


class Lookups:
    async def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        return {"uri"}

    async def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        return None

    async def service_account_exists(self, namespace: str, name: str) -> bool:
        return True

    async def probe_url(self, url: str) -> str | None:
        return None


def spec(filter_: Any = None, projection: Any = None, *, exclude: bool = False) -> dict[str, Any]:
    mongo: dict[str, Any] = {"kind": "mongo", "collection": "users"}
    if filter_ is not None:
        mongo["filter"] = filter_
    if projection is not None:
        mongo["projection"] = projection
    inline = {"kind": "inline", "users": ["u1"]}
    return {
        "audience": {"sources": [inline, mongo]} | ({"exclude": [mongo]} if exclude else {}),
        "message": {"webhook": {"url": "http://sink/hook"}, "template": {"body": "hi"}},
    }


@pytest.mark.parametrize(
    ("s", "path"),
    [
        (spec({"$where": JS}), "spec.audience.sources[1].filter.$where"),
        (spec({"$or": [{"a": 1}, {"$and": [{"$nor": [{"$expr": {}}]}]}]}),
         "spec.audience.sources[1].filter.$or[1].$and[0].$nor[0].$expr"),
        (spec({"tags": {"$elemMatch": {"$where": JS}}}),
         "spec.audience.sources[1].filter.tags.$elemMatch.$where"),
        (spec({"a": {"$not": {"$function": {"body": JS}}}}),
         "spec.audience.sources[1].filter.a.$not.$function"),
        (spec(projection={"x": {"$function": {"body": JS}}}),
         "spec.audience.sources[1].projection.x.$function"),
    ],
)  # fmt: skip
def test_the_operator_fails_the_task_naming_the_refused_operator(
    s: dict[str, Any], path: str
) -> None:
    v = asyncio.run(validate(s, "ns", Lookups(), SETTINGS, probe_urls=False))
    assert not v.ok and v.permanent and v.reason == "QueryRefused"
    assert v.message.startswith(f"{path}: operator "), v.message
    assert refused_query(s) == v.message


def test_exclusions_are_checked_too() -> None:
    s = spec({"a": 1}, exclude=True)
    s["audience"]["exclude"] = [{"kind": "mongo", "collection": "u", "filter": {"$where": JS}}]
    assert refused_query(s) is not None
    assert str(refused_query(s)).startswith("spec.audience.exclude[0].filter.$where: ")


def test_allowed_queries_pass_the_operator() -> None:
    s = spec({"age": {"$gte": 18}, "$or": [{"plan": "pro"}, {"name": {"$regex": "^A"}}]})
    assert refused_query(s) is None
    assert asyncio.run(validate(s, "ns", Lookups(), SETTINGS, probe_urls=False)).ok


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ({"kind": "mongo"}, "spec.audience.sources[1].collection: Field required"),
        ({"kind": "inline", "users": ["ok", None]}, "spec.audience.sources[1].users[1]: "),
    ],
)
def test_an_invalid_spec_names_the_field_as_the_api_server_does(
    source: dict[str, Any], words: str
) -> None:
    # A task stored before the CRD refused such a spec (or a null entry, which the CRD
    # lets through) fails with the field in Kubernetes' own notation.
    s = spec()
    s["audience"]["sources"][1] = source
    v = asyncio.run(validate(s, "ns", Lookups(), SETTINGS, probe_urls=False))
    assert not v.ok and v.permanent and v.reason == "InvalidSpec"
    assert v.message.startswith(words), v.message


def test_a_malformed_audience_is_left_to_the_models() -> None:
    assert refused_query({"audience": "everyone"}) is None
    assert refused_query({"audience": {"sources": ["x", {"kind": "mongo"}]}}) is None


class Untouchable:
    """A collection that fails the test if the worker sends it anything."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the refused query reached the database ({name})")


def test_the_worker_refuses_before_planning() -> None:
    coll: Any = Untouchable()
    with pytest.raises(mongosource.QueryNotAllowed) as info:
        asyncio.run(mongosource.plan_ranges(coll, {"$where": JS}, "_id", 100))
    assert isinstance(info.value, SourceError)  # fails the run like an unreadable source
    assert "filter.$where: operator $where is not allowed" in str(info.value)


@pytest.mark.parametrize(
    ("query", "projection", "words"),
    [
        ({"$or": [{"$where": JS}]}, None, "filter.$or[0].$where"),
        ({"a": 1}, {"x": "$secret"}, "projection.x"),
    ],
)
def test_the_worker_refuses_before_reading(
    query: dict[str, Any], projection: dict[str, Any] | None, words: str
) -> None:
    coll: Any = Untouchable()

    async def read() -> None:
        async for _ in mongosource.read_range(
            coll, query, projection, "_id", Columns(user="_id"), None, None
        ):
            pass

    with pytest.raises(mongosource.QueryNotAllowed, match=re.escape(words)):
        asyncio.run(read())
