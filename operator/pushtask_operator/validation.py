"""Checks the schema cannot make: templates compile, referenced objects exist, URLs answer.

`validate()` is plain async code over a `Lookups` protocol, so the rules are tested with
fakes; the handler passes lookups backed by the Kubernetes API and aiohttp. The order
matters: a permanent problem (the spec can never work as written) is reported before
problems that are waited out (an object not created yet, a server not up yet).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import ValidationError

from pushtask import mongoquery
from pushtask.models import PushTaskSpec, describe_errors
from pushtask.templates import TemplateCompileError, compile_message
from pushtask_operator.deployment import secret_key_refs
from pushtask_operator.reconcile import Validation
from pushtask_operator.settings import OperatorSettings

# ConfigMap content is copied into the run document, which MongoDB caps at 16 MiB: keep
# the copies well below it, leaving room for the spec and the rest of the run.
CONFIGMAP_COPY_LIMIT = 8 * 1024 * 1024


class Lookups(Protocol):
    async def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        """Keys of a Secret; None when it does not exist."""

    async def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """Data of a ConfigMap; None when it does not exist."""

    async def service_account_exists(self, namespace: str, name: str) -> bool: ...

    async def probe_url(self, url: str) -> str | None:
        """None when the URL answers with a success; else why not."""


def refused_query(spec: Mapping[str, Any]) -> str | None:
    """The first filter or projection part outside the allow-list, with its full path.

    Checked on the raw spec before the models: a task stored before the CRD refused
    such queries still reaches here, and the message names the operator exactly
    ("spec.audience.sources[0].filter.$or[1].$where: operator $where is not allowed").
    """
    audience = spec.get("audience")
    if not isinstance(audience, Mapping):
        return None
    for part in ("sources", "exclude"):
        sources = audience.get(part)
        for i, source in enumerate(sources if isinstance(sources, list) else []):
            if not isinstance(source, Mapping):
                continue
            try:
                mongoquery.check_source(source, f"spec.audience.{part}[{i}]")
            except mongoquery.QueryRefused as exc:
                return str(exc)
    return None


def _first_error(exc: ValidationError) -> str:
    # Kubernetes field paths ("spec.audience.sources[0].users[2]"), as the API server and
    # `kubectl push` write them, not pydantic's locations (which hold union tags).
    lines = describe_errors(exc, prefix="spec")
    return lines[0] if lines else str(exc)


async def validate(
    spec: Mapping[str, Any],
    namespace: str,
    lookups: Lookups,
    settings: OperatorSettings,
    *,
    probe_urls: bool = True,
) -> Validation:
    # Permanent: the spec as written cannot work.
    refused = refused_query(spec)
    if refused is not None:
        return Validation.failed("QueryRefused", refused, permanent=True)
    try:
        model = PushTaskSpec.model_validate(dict(spec))
    except ValidationError as exc:
        return Validation.failed("InvalidSpec", _first_error(exc), permanent=True)
    try:
        compile_message(model.message.template)
    except TemplateCompileError as exc:
        return Validation.failed("TemplateError", f"spec.message.{exc}", permanent=True)

    # Waited out: objects that may be created later, servers that may come up.
    secret = settings.mongo_secret_name
    keys = await lookups.secret_keys(namespace, secret)
    if keys is None or settings.mongo_secret_key not in keys:
        return Validation.failed(
            "MongoSecretMissing",
            f'Secret "{secret}" with key "{settings.mongo_secret_key}" (the MongoDB URI for '
            f'workers) not found in namespace "{namespace}"',
            permanent=False,
        )
    account = settings.worker_service_account
    if account and not await lookups.service_account_exists(namespace, account):
        return Validation.failed(
            "WorkerServiceAccountMissing",
            f'ServiceAccount "{account}" for workers not found in namespace "{namespace}"',
            permanent=False,
        )
    for ref in secret_key_refs(spec):
        keys = await lookups.secret_keys(namespace, ref.secret)
        if keys is None:
            return Validation.failed(
                "SecretMissing",
                f'Secret "{ref.secret}" ({ref.field}) not found in namespace "{namespace}"',
                permanent=False,
            )
        if ref.key not in keys:
            return Validation.failed(
                "SecretKeyMissing",
                f'Secret "{ref.secret}" ({ref.field}) has no key "{ref.key}"',
                permanent=False,
            )
    copied = 0
    for part in ("sources", "exclude"):
        for i, source in enumerate(spec.get("audience", {}).get(part) or []):
            field = f"spec.audience.{part}[{i}]"
            if source.get("kind") == "configMap":
                data = await lookups.configmap_data(namespace, source["name"])
                found = configmap_key(source, field, namespace, data)
                if isinstance(found, Validation):
                    return found
                copied += len(found.encode())
                if copied > CONFIGMAP_COPY_LIMIT:
                    return Validation.failed(
                        "ConfigMapTooLarge",
                        f"{field}: the configMap sources hold {copied:,} bytes together; the "
                        f"run document copies them and takes at most "
                        f"{CONFIGMAP_COPY_LIMIT:,} (use a url or mongo source for a larger "
                        "audience)",
                        permanent=False,
                    )
            elif source.get("kind") == "url" and probe_urls:
                problem = await lookups.probe_url(source["url"])
                if problem is not None:
                    return Validation.failed(
                        "SourceUnreachable",
                        f"{field}: {source['url']} does not answer: {problem}",
                        permanent=False,
                    )
    return Validation()


def configmap_key(
    source: Mapping[str, Any], field: str, namespace: str, data: Mapping[str, str] | None
) -> str | Validation:
    """The text of a configMap source's key in `data` (None: no such map), or why it
    cannot be read."""
    if data is None:
        return Validation.failed(
            "ConfigMapMissing",
            f'ConfigMap "{source["name"]}" ({field}) not found in namespace "{namespace}"',
            permanent=False,
        )
    if source["key"] not in data:
        return Validation.failed(
            "ConfigMapKeyMissing",
            f'ConfigMap "{source["name"]}" ({field}) has no key "{source["key"]}"',
            permanent=False,
        )
    return data[source["key"]]


class SourceGone(Exception):
    """A configMap source could not be read when its run was being created."""

    def __init__(self, validation: Validation) -> None:
        super().__init__(validation.message)
        self.validation = validation


async def configmap_contents(
    spec: Mapping[str, Any], namespace: str, lookups: Lookups
) -> dict[str, str]:
    """ConfigMap text of each configMap source, keyed as the run document's `inline`.

    Workers cannot read ConfigMaps (no API access): the operator copies the content into
    the run document when the run is created, which also freezes it for the run.
    Keys: the source's index in `sources`, or `exclude.<i>` for exclusion sources.
    A map or key that is gone raises `SourceGone`, never reads as "": an empty exclusion
    list would send to everyone it names.
    """
    out: dict[str, str] = {}
    for part in ("sources", "exclude"):
        for i, source in enumerate(spec.get("audience", {}).get(part) or []):
            if source.get("kind") != "configMap":
                continue
            data = await lookups.configmap_data(namespace, source["name"])
            found = configmap_key(source, f"spec.audience.{part}[{i}]", namespace, data)
            if isinstance(found, Validation):
                raise SourceGone(found)
            out[str(i) if part == "sources" else f"exclude.{i}"] = found
    return out
