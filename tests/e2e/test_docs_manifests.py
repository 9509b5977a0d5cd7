"""Every PushTask the README, docs/ and examples/ show, applied on a cluster and run to Finished.

A manifest in the documentation is what a new user copies first; one that cannot run
(the README's template once used `{{ user.name }}` while `user` is the id string, and
failed every recipient) costs that user their first hour. Each ```yaml block with
`kind: PushTask` in README.md and docs/*.md, and each file in examples/, is taken as
written, except what only a real deployment has: the webhook URL becomes a local sink
(which verifies the signatures with the Secret the manifest names), an SMTP server a
local one (plain, as no certificate is at hand), FCM and APNs local servers speaking
their protocols (tests/support/fcm_server.py, apns_server.py: the Secrets hold keys made
for the test, whose signatures those servers verify; APNs over HTTP/2 and TLS with a
devstack-made certificate, its CA in a Secret too), a file URL a local file server; the
objects it refers to are created (Secrets, ConfigMaps, a MongoDB collection whose
documents match its filter, files), each row carrying every attribute its templates use;
`schedule` is dropped after the API server accepted it as written (a send window or a
cron must not make the test depend on the hour); at most two workers run. Then:
Finished, exactly the expected users once each, every message as the templates render it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope
from pymongo import MongoClient

from pushtask.templates import RESERVED, build_context, compile_message, render
from tests.e2e.release import QualifiedEnv
from tests.e2e.test_operator_e2e import (  # noqa: F401  (env: a pytest fixture)
    SINK_HOST,
    Env,
    env,
)
from tests.support.apns_server import ApnsKey, ApnsServerThread, local_pki
from tests.support.fcm_server import FcmServerThread, ServiceAccountKey
from tests.support.sink import SinkThread, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
USERS_PER_SOURCE = 12
SMTP_USER = "pushtask"


def documented_manifests() -> list[tuple[str, dict[str, Any]]]:
    """(where, manifest) for every PushTask in a ```yaml block of the README and docs/, and
    in the files of examples/."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.M | re.S):
            line = text.count("\n", 0, match.start()) + 1
            for doc in yaml.safe_load_all(match.group(1)):
                if isinstance(doc, dict) and doc.get("kind") == "PushTask":
                    name = doc.get("metadata", {}).get("name", "?")
                    found.append((f"{path.relative_to(ROOT)}:{line}:{name}", doc))
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "PushTask":
                name = doc.get("metadata", {}).get("name", "?")
                found.append((f"{path.relative_to(ROOT)}:{name}", doc))
    return found


MANIFESTS = documented_manifests()


def test_the_docs_show_manifests() -> None:
    assert any(where.startswith("README.md") for where, _ in MANIFESTS), MANIFESTS
    assert len([w for w, _ in MANIFESTS if w.startswith("examples/")]) == len(EXAMPLES)


# -- local stand-ins for the servers a manifest names -------------------------------------


class Files:
    """A small HTTP file server for url sources: HEAD and GET, no ranges (read whole)."""

    def __init__(self, host: str) -> None:
        self.files: dict[str, bytes] = {}
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                data = files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.host = host
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """An aiosmtpd handler keeping every message with its envelope recipients."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(content)))
        return "250 OK"


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
    files: Files | None = None
    mail_port: int = 0
    to_field: str | None = None  # smtp, fcm, apns: the attribute holding the address
    push: FcmServerThread | ApnsServerThread | None = None  # the local FCM or APNs

    def address(self, user: str) -> str:
        """The user's address on the channel: an e-mail address or a device token."""
        if isinstance(self.push, ApnsServerThread):
            return hashlib.sha256(user.encode()).hexdigest()  # 64 hex digits, as APNs wants
        if isinstance(self.push, FcmServerThread):
            return f"fcm-{user}"
        return f"{user}@mail.test"

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
    if world.to_field:
        for u in ids:
            rows[u][world.to_field] = world.address(u)
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
    elif kind == "url":
        assert world.files is not None
        fmt, id_field = source["format"], source.get("idField") or "id"
        # `columns` maps attribute -> column: the file has the columns, the rows the names.
        columns = {n: (source.get("columns") or {}).get(n, n) for u in ids for n in rows[u]}
        if fmt == "csv":
            text = ",".join([id_field, *columns.values()]) + "\n"
            text += "".join(",".join([u, *(rows[u][n] for n in columns)]) + "\n" for u in ids)
        else:
            text = "".join(
                json.dumps({id_field: u, **{columns[n]: rows[u][n] for n in columns}}) + "\n"
                for u in ids
            )
        path = f"/{tag}.{fmt}"
        world.files.files[path] = text.encode()
        source["url"] = world.files.url(path)
    else:
        pytest.fail(f"{where}: extend make_source() for a {kind} source")
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
    channel = message.get("channel", "webhook")
    if channel == "webhook":
        message["webhook"]["url"] = world.env.sink.url
        ref = message["webhook"].get("secretRef")
        if ref:
            world.secret_with(ref["name"], ref.get("key") or "hmac", world.secret)
    elif channel == "smtp":
        smtp = message["smtp"]
        smtp.update(host=SINK_HOST, port=world.mail_port, starttls=False)
        world.to_field = smtp.get("toField") or "email"
        ref = smtp.get("credentialsSecretRef")
        if ref:
            world.kubectl(
                "create", "secret", "generic", ref["name"],
                f"--from-literal=username={SMTP_USER}", f"--from-literal=password={world.secret}",
            )  # fmt: skip
    elif channel == "fcm":
        fcm, server = message["fcm"], world.push
        assert isinstance(server, FcmServerThread)
        fcm["endpoint"] = server.endpoint  # the JSON key file names the token endpoint
        world.to_field = fcm.get("tokenAttribute") or "deviceToken"
        ref = fcm["serviceAccountSecretRef"]
        key = ref.get("key") or "service-account.json"
        world.secret_with(ref["name"], key, server.account.json(server.token_uri))
    elif channel == "apns":
        apns, server = message["apns"], world.push
        assert isinstance(server, ApnsServerThread)
        apns["endpoint"] = server.endpoint
        world.to_field = apns.get("tokenAttribute") or "deviceToken"
        ref = apns["keySecretRef"]
        (key,) = server.keys.values()
        world.secret_with(ref["name"], ref.get("key") or "key.p8", key.p8)
        apns["caSecretRef"] = {"name": f"{ref['name']}-test-ca"}
        world.secret_with(f"{ref['name']}-test-ca", "ca.crt", server.ca_pem)
    else:
        pytest.fail(f"extend prepare() for the {channel} channel")
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
def signed_env(base: Env, secret: str | None) -> Iterator[Env]:
    """The test's release with a sink that verifies signatures made with `secret` (None:
    the manifest signs nothing, and the sink checks nothing)."""
    with SinkThread(host=SINK_HOST, secret=secret, keep_messages=True) as sink:
        yield QualifiedEnv(base.kubectl, base.namespace, base.mongo_uri, sink, base.release)


@contextlib.contextmanager
def push_server(
    manifest: Mapping[str, Any], pki_root: Path
) -> Iterator[FcmServerThread | ApnsServerThread | None]:
    """The local FCM or APNs a manifest's channel needs, with keys made for it."""
    message = manifest["spec"]["message"]
    channel = message.get("channel", "webhook")
    if channel == "fcm":
        account = ServiceAccountKey.make(message["fcm"].get("projectId") or "pushtask-docs")
        with FcmServerThread(account, host=SINK_HOST) as fcm:
            yield fcm
    elif channel == "apns":
        apns = message["apns"]
        key = ApnsKey.make(apns["keyId"], apns["teamId"])
        pki = local_pki(pki_root)  # its serving certificate names 127.0.0.1 and localhost
        with ApnsServerThread({key.key_id: key}, apns["topic"], pki, host=SINK_HOST) as server:
            yield server
    else:
        yield None


def pushed(world: World) -> Iterator[tuple[str, Any]]:
    """(device token, what the phone gets) of each notification the local FCM or APNs
    delivered; the idempotency key, different per run, left out."""
    if isinstance(world.push, FcmServerThread):
        for f in world.push.delivered:
            data = {k: v for k, v in f.message.get("data", {}).items() if k != "idempotencyKey"}
            yield f.token, (f.message.get("notification"), data)
    elif isinstance(world.push, ApnsServerThread):
        for a in world.push.delivered:
            yield a.token, {k: v for k, v in a.payload.items() if k != "idempotencyKey"}


@contextlib.contextmanager
def local_servers(secret: str) -> Iterator[tuple[Files, Controller, Mailbox]]:
    """A file server and an SMTP server (accepting SMTP_USER with `secret`) for one test."""

    def login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        return AuthResult(
            success=(data.login, data.password) == (SMTP_USER.encode(), secret.encode())
        )

    files, mailbox = Files(SINK_HOST), Mailbox()
    smtp = Controller(
        mailbox, hostname=SINK_HOST, port=free_port(SINK_HOST), authenticator=login,
        auth_require_tls=False,
    )  # fmt: skip
    smtp.start()
    try:
        yield files, smtp, mailbox
    finally:
        smtp.stop()
        files.close()


def received(world: World, task: Mapping[str, Any], mailbox: Mailbox) -> dict[str, list[Any]]:
    """What each user got, as the channel's own form: the webhook's message, or the mail's
    (subject, text)."""
    out: dict[str, list[Any]] = {}
    if world.push is not None:
        by_token = {str(attrs.get(world.to_field or "")): u for u, attrs in world.attrs.items()}
        for token, message in pushed(world):
            out.setdefault(by_token.get(token, token), []).append(message)
        return out
    if task["spec"]["message"].get("channel", "webhook") == "webhook":
        for rec in world.env.sink.requests:
            if rec.user is not None and 200 <= rec.status < 300:
                out.setdefault(rec.user, []).append(rec.message)
        return out
    by_address = {world.address(u): u for u in world.attrs}
    for rcpts, mail in mailbox.messages:
        for rcpt in rcpts:
            raw = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
            text = raw.replace("\r\n", "\n").rstrip("\n")  # SMTP's line ends, the last one
            out.setdefault(by_address.get(rcpt, rcpt), []).append((mail["Subject"], text))
    return out


def expected_message(task: Mapping[str, Any], rendered: dict[str, Any]) -> Any:
    channel = task["spec"]["message"].get("channel", "webhook")
    if channel == "webhook":
        return rendered
    extra = rendered.get("extra") or {}
    link = {"link": rendered["link"]} if rendered.get("link") else {}
    shown = {k: str(rendered[k]) for k in ("title", "body") if rendered.get(k)}
    if channel == "fcm":  # the notification, and data fields (strings only)
        return (shown or None, {**{k: str(v) for k, v in extra.items()}, **link})
    if channel == "apns":  # aps.alert, and the custom keys beside aps
        return {**extra, **link, "aps": {"alert": shown}}
    text = str(rendered.get("body") or "")
    if rendered.get("link"):
        text = f"{text}\n\n{rendered['link']}" if text else str(rendered["link"])
    return (str(rendered.get("title") or extra.get("subject") or ""), text)


@pytest.mark.parametrize(("where", "manifest"), MANIFESTS, ids=[w for w, _ in MANIFESTS])
def test_documented_manifest_runs_to_finished(
    env: Env,  # noqa: F811
    where: str,
    manifest: dict[str, Any],
    tmp_path: Path,
) -> None:
    # As written, schedule and all: the API server accepts it.
    as_written = copy.deepcopy(manifest)
    as_written["metadata"].pop("namespace", None)
    env.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(as_written))

    secret = secrets.token_hex(16)
    database = f"docs_{secrets.token_hex(4)}"
    signs = bool((manifest["spec"]["message"].get("webhook") or {}).get("secretRef"))
    sink_secret = secret if signs else None
    with (
        signed_env(env, sink_secret) as here,
        local_servers(secret) as (files, smtp, mailbox),
        push_server(manifest, tmp_path / "pki") as push,
    ):
        world = World(here, secret, database, files=files, mail_port=int(smtp.port), push=push)
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
        got = received(world, task, mailbox)
        assert not [u for u, m in got.items() if len(m) > 1], f"{where}: a user got it twice"
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
        for user, (message,) in got.items():
            context = build_context(user, world.attrs[user], task=meta, run=1)
            want = expected_message(task, render(compiled, context))
            assert message == want, f"{where}: {user} got {message}, not {want}"
