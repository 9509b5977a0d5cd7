"""The Secret keys a spec refers to, and the environment variables workers get them in.

Shared: the operator maps them into the worker Deployment's pod template, and a test send
(pushtask_client.testsend) into its one-shot pod from the spec as it is now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def dig(spec: Mapping[str, Any], *path: str, default: Any = None) -> Any:
    """The value at `path` in a spec mapping; `default` where a key is missing or null."""
    node: Any = spec
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return default if node is None else node


@dataclass(frozen=True)
class SecretKeyRef:
    """A Secret key a worker needs, and the environment variable it arrives in."""

    env: str
    secret: str
    key: str
    field: str  # where the spec names it, for messages


def secret_key_refs(spec: Mapping[str, Any]) -> list[SecretKeyRef]:
    """Every Secret key the spec refers to, mapped to the worker's environment.

    Workers never read Secrets from the API: the kubelet puts them in the environment,
    where the channels find them (`PUSHTASK_WEBHOOK_SECRET`, `PUSHTASK_WEBHOOK_SECRET_PREVIOUS`
    in a key rotation, `PUSHTASK_SMTP_USERNAME`, `PUSHTASK_SMTP_PASSWORD`,
    `PUSHTASK_FCM_SERVICE_ACCOUNT`, `PUSHTASK_APNS_KEY`, `PUSHTASK_FCM_CA_BUNDLE`,
    `PUSHTASK_APNS_CA_BUNDLE`, `PUSHTASK_SMTP_CA_BUNDLE`), the tracker key that signs
    tracked links (`PUSHTASK_TRACKER_KEY`) and the MongoDB sources their URIs
    (`PUSHTASK_AUDIENCE_SOURCES_<i>_URI`, `PUSHTASK_AUDIENCE_EXCLUDE_<i>_URI`).
    """
    refs: list[SecretKeyRef] = []
    message = dig(spec, "message", default={})
    hook_ref = dig(message, "webhook", "secretRef")
    if hook_ref:
        refs.append(
            SecretKeyRef(
                "PUSHTASK_WEBHOOK_SECRET",
                hook_ref["name"],
                hook_ref.get("key") or "hmac",
                "spec.message.webhook.secretRef",
            )
        )
        if hook_ref.get("previousKey"):  # a key rotation: both secrets sign
            refs.append(
                SecretKeyRef(
                    "PUSHTASK_WEBHOOK_SECRET_PREVIOUS",
                    hook_ref["name"],
                    hook_ref["previousKey"],
                    "spec.message.webhook.secretRef.previousKey",
                )
            )
    creds = dig(message, "smtp", "credentialsSecretRef")
    if creds:
        for key in ("username", "password"):
            refs.append(
                SecretKeyRef(
                    f"PUSHTASK_SMTP_{key.upper()}",
                    creds["name"],
                    key,
                    "spec.message.smtp.credentialsSecretRef",
                )
            )
    # Credential files themselves arrive as env values (a .p8 key, a service-account JSON,
    # a PEM CA bundle), read by the fcm, apns and smtp channels.
    mobile = (
        ("fcm", "serviceAccountSecretRef", "PUSHTASK_FCM_SERVICE_ACCOUNT", "service-account.json"),
        ("fcm", "caSecretRef", "PUSHTASK_FCM_CA_BUNDLE", "ca.crt"),
        ("apns", "keySecretRef", "PUSHTASK_APNS_KEY", "key.p8"),
        ("apns", "caSecretRef", "PUSHTASK_APNS_CA_BUNDLE", "ca.crt"),
        ("smtp", "caSecretRef", "PUSHTASK_SMTP_CA_BUNDLE", "ca.crt"),
    )
    for channel, field, env, default_key in mobile:
        ref = dig(message, channel, field)
        if ref:
            refs.append(
                SecretKeyRef(
                    env,
                    ref["name"],
                    ref.get("key") or default_key,
                    f"spec.message.{channel}.{field}",
                )
            )
    tracking = dig(message, "tracking", default={})
    if tracking.get("links") and tracking.get("secretRef"):
        ref = tracking["secretRef"]
        refs.append(
            SecretKeyRef(
                "PUSHTASK_TRACKER_KEY",
                ref["name"],
                ref.get("key") or "key",
                "spec.message.tracking.secretRef",
            )
        )
    for part in ("sources", "exclude"):
        for i, source in enumerate(dig(spec, "audience", part, default=[]) or []):
            ref = source.get("secretRef") if isinstance(source, Mapping) else None
            if source.get("kind") == "mongo" and ref:
                refs.append(
                    SecretKeyRef(
                        f"PUSHTASK_AUDIENCE_{part.upper()}_{i}_URI",
                        ref["name"],
                        ref.get("key") or "uri",
                        f"spec.audience.{part}[{i}].secretRef",
                    )
                )
    return refs
