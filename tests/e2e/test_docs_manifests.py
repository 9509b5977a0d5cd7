"""Every PushTask the README and docs/ show, applied on a cluster and run to Finished.

A manifest in the documentation is what a new user copies first; one that cannot run
(the README's template once used `{{ user.name }}` while `user` is the id string, and
failed every recipient) costs that user their first hour. Each ```yaml block with
`kind: PushTask` in README.md and docs/*.md is taken as written, except what only a real
deployment has: the webhook URL becomes a local sink (which verifies the signatures with
the Secret the manifest names), the objects it refers to are created (Secrets,
ConfigMaps, a MongoDB collection whose documents match its filter and carry every
attribute its templates use), `schedule` is dropped after the API server accepted it as
written (a send window must not make the test depend on the hour), and at most two
workers run. Then: Finished, exactly the expected users once each, every message as the
templates render it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pymongo import MongoClient

from pushtask.templates import RESERVED, build_context, compile_message, render
from tests.e2e.release import QualifiedEnv
from tests.e2e.test_operator_e2e import (  # noqa: F401  (env: a pytest fixture)
    SINK_HOST,
    Env,
    env,
)
from tests.support.sink import SinkThread

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
USERS_PER_SOURCE = 12


def documented_manifests() -> list[tuple[str, dict[str, Any]]]:
    """(where, manifest) for every PushTask in a ```yaml block of the README and docs/."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.M | re.S):
            line = text.count("\n", 0, match.start()) + 1
            for doc in yaml.safe_load_all(match.group(1)):
                if isinstance(doc, dict) and doc.get("kind") == "PushTask":
                    name = doc.get("metadata", {}).get("name", "?")
                    found.append((f"{path.relative_to(ROOT)}:{line}:{name}", doc))
    return found


MANIFESTS = documented_manifests()


def test_the_docs_show_manifests() -> None:
    assert any(where.startswith("README.md") for where, _ in MANIFESTS), MANIFESTS


# -- what a manifest refers to, made real ---------------------------------------------


def satisfying(query: Mapping[str, Any]) -> dict[str, Any]:
    """Field values a document needs to match `query` (the operators docs use)."""
    doc: dict[str, Any] = {}
    for key, cond in query.items():
        if key == "$and":
            for part in cond:
                doc.update(satisfying(part))
        elif key == "$or":
            doc.update(satisfying(cond[0]))
        elif key.startswith("$"):
            pytest.fail(f"extend satisfying() for the top-level operator {key} of {query}")
        elif isinstance(cond, Mapping) and any(str(k).startswith("$") for k in cond):
            value = _value_for(key, cond)
            if value is not _ABSENT:
                doc[key] = value
        else:
            doc[key] = cond
    return doc


_ABSENT = object()


def _value_for(key: str, cond: Mapping[str, Any]) -> Any:
    ops = dict(cond)
    if "$eq" in ops:
        return ops["$eq"]
    if "$in" in ops:
        return ops["$in"][0]
    if "$exists" in ops:
        return f"{key}-value" if ops["$exists"] else _ABSENT
    if set(ops) <= {"$ne", "$nin"}:
        return _ABSENT  # a missing field matches both
    for bound in ("$gte", "$lte"):
        if bound in ops:
            return ops[bound]
    if "$gt" in ops:
        v = ops["$gt"]
        return v + 1 if isinstance(v, int | float) else f"{v}~"
    if "$lt" in ops:
        v = ops["$lt"]
        return v - 1 if isinstance(v, int | float) else str(v)[:-1]
    pytest.fail(f"extend _value_for() for {key}: {cond}")


def not_matching(query: Mapping[str, Any]) -> dict[str, Any] | None:
    """A document `query` does not match, when it has a plain equality to break."""
    doc = satisfying(query)
    for key, cond in query.items():
        if not key.startswith("$") and not isinstance(cond, Mapping):
            doc[key] = f"not-{cond}" if not isinstance(cond, bool) else not cond
            return doc
    return None


@dataclass
class World:
    """The objects created for one manifest, and who should get what."""

    env: Env
    secret: str
    database: str
    attrs: dict[str, dict[str, Any]] = field(default_factory=dict)  # user -> row attributes
    excluded: set[str] = field(default_factory=set)
    outsiders: set[str] = field(default_factory=set)  # rows the filters must not select
    configmaps: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> key -> text

    def client(self) -> MongoClient[dict[str, Any]]:
        return MongoClient(self.env.mongo_uri, serverSelectionTimeoutMS=5000)

    def kubectl(self, *args: str) -> None:
        self.env.kubectl(*args)

    def secret_with(self, name: str, key: str, value: str) -> None:
        self.kubectl("create", "secret", "generic", name, f"--from-literal={key}={value}")


def variables(template: Mapping[str, Any]) -> list[str]:
    """Attribute names the templates use (the reserved names are not attributes)."""
    return sorted(compile_message(template).variables - set(RESERVED))


def make_source(
    world: World, source: dict[str, Any], where: str, names: list[str], *, exclude: bool
) -> list[str]:
    """Create what `source` reads (rewriting it where a real deployment differs); its users."""
    kind = source["kind"]
    tag = where.replace(".", "-").replace("[", "").replace("]", "")
    ids = [f"{tag}-{i:03d}" for i in range(USERS_PER_SOURCE)]
    rows = {u: {n: f"{n}-{u}" for n in names} for u in ids}
    if exclude:
        # Exclude some users the sources really have, and one nobody has.
        ids = [*sorted(world.attrs)[:2], f"{tag}-nobody"]
        rows = {u: {} for u in ids}
    if kind == "inline":
        listed = source["users"]
        users = [str(u["id"]) if isinstance(u, Mapping) else str(u) for u in listed]
        if not exclude:
            for entry, user in zip(listed, users, strict=True):
                world.attrs[user] = dict(entry) if isinstance(entry, Mapping) else {}
                world.attrs[user].pop("id", None)
        return users
    if kind == "mongo":
        id_field = source.get("idField") or "_id"
        if source.get("secretRef"):
            ref = source["secretRef"]
            world.secret_with(ref["name"], ref.get("key") or "uri", world.env.mongo_uri)
        if source.get("database"):
            source["database"] = world.database  # the test's own, dropped afterwards
        db_name = source.get("database") or urlsplit(world.env.mongo_uri).path.strip("/")
        query = source.get("filter") or {}
        docs = [{**satisfying(query), **rows[u], id_field: u} for u in ids]
        outsider = not_matching(query)
        if outsider is not None and not exclude:
            world.outsiders.add(f"{tag}-outsider")
            docs.append({**outsider, **rows[ids[0]], id_field: f"{tag}-outsider"})
        with world.client() as client:
            client[db_name][source["collection"]].insert_many(docs)
    elif kind == "configMap":
        fmt = source.get("format") or "lines"
        id_field = source.get("idField") or "id"
        if fmt == "lines":
            text = "".join(f"{u}\n" for u in ids)
        elif fmt == "csv":
            header = [id_field, *names]
            text = ",".join(header) + "\n"
            text += "".join(",".join([u, *(rows[u].get(n, "") for n in names)]) + "\n" for u in ids)
        else:
            text = "".join(json.dumps({id_field: u, **rows[u]}) + "\n" for u in ids)
        # Created once all are known: two sources may read two keys of one ConfigMap.
        world.configmaps.setdefault(source["name"], {})[source["key"]] = text
    else:
        pytest.fail(f"{where}: extend make_source() for a {kind} source (a file server)")
    if not exclude:
        for u in ids:
            world.attrs[u] = rows[u]
    return ids


def prepare(world: World, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as this cluster can run it; the objects it needs created."""
    task = copy.deepcopy(manifest)
    task["metadata"].pop("namespace", None)
    spec = task["spec"]
    spec.pop("schedule", None)
    spec.pop("state", None)
    spec["workers"] = min(int(spec.get("workers") or 1), 2)
    message = spec["message"]
    if message.get("channel", "webhook") != "webhook":
        pytest.fail(f"extend prepare() for the {message['channel']} channel")
    message["webhook"]["url"] = world.env.sink.url
    ref = message["webhook"].get("secretRef")
    if ref:
        world.secret_with(ref["name"], ref.get("key") or "hmac", world.secret)
    names = variables(message["template"])
    audience = spec["audience"]
    for i, source in enumerate(audience["sources"]):
        make_source(world, source, f"sources[{i}]", names, exclude=False)
    for i, source in enumerate(audience.get("exclude") or []):
        world.excluded |= set(make_source(world, source, f"exclude[{i}]", names, exclude=True))
    for cm, data in world.configmaps.items():
        world.kubectl(
            "create", "configmap", cm, *(f"--from-literal={k}={v}" for k, v in data.items())
        )
    return task


@contextlib.contextmanager
def signed_env(base: Env, secret: str) -> Iterator[Env]:
    """The test's release with a sink that verifies signatures made with `secret`."""
    with SinkThread(host=SINK_HOST, secret=secret, keep_messages=True) as sink:
        yield QualifiedEnv(base.kubectl, base.namespace, base.mongo_uri, sink, base.release)


@pytest.mark.parametrize(("where", "manifest"), MANIFESTS, ids=[w for w, _ in MANIFESTS])
def test_documented_manifest_runs_to_finished(
    env: Env,  # noqa: F811
    where: str,
    manifest: dict[str, Any],
) -> None:
    # As written, schedule and all: the API server accepts it.
    as_written = copy.deepcopy(manifest)
    as_written["metadata"].pop("namespace", None)
    env.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(as_written))

    secret = secrets.token_hex(16)
    database = f"docs_{secrets.token_hex(4)}"
    with signed_env(env, secret) as here:
        world = World(here, secret, database)
        try:
            task = prepare(world, manifest)
            name = task["metadata"]["name"]
            here.apply(task)
            status = here.wait_phase(name, "Finished", 240)
            here.quiet_sink()
        finally:
            with world.client() as client:
                client.drop_database(database)
        expected = set(world.attrs) - world.excluded
        got = {u: c for u, c in here.delivered().items() if u is not None}
        assert not [u for u, c in got.items() if c > 1], f"{where}: a user got it twice"
        assert set(got) == expected, (
            f"{where}: missing {sorted(expected - set(got))[:5]}, "
            f"unexpected {sorted(set(got) - expected)[:5]}"
        )
        assert not world.outsiders & set(got), f"{where}: the filter let outsiders in"
        counts = status["counts"]
        assert counts["sent"] == len(expected) and counts["failed"] == 0, counts
        stats = here.sink.stats()
        assert stats["bad_signatures"] == 0 and stats["rejected"] == 0, stats
        # What each user got is what the templates say for that user's row.
        compiled = compile_message(task["spec"]["message"]["template"])
        meta = {"namespace": here.namespace, "name": name}
        for rec in here.sink.requests:
            assert rec.user is not None
            want = render(
                compiled, build_context(rec.user, world.attrs[rec.user], task=meta, run=1)
            )
            assert rec.message == want, f"{where}: {rec.user} got {rec.message}, not {want}"
