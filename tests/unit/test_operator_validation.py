import asyncio
from typing import Any

import pytest

from pushtask_operator.settings import OperatorSettings
from pushtask_operator.validation import (
    CONFIGMAP_COPY_LIMIT,
    SourceGone,
    configmap_contents,
    validate,
)

SETTINGS = OperatorSettings(mongo_secret_name="mongo", worker_service_account="pt-worker")


class Fake:
    def __init__(self) -> None:
        self.secrets: dict[str, set[str]] = {"mongo": {"uri"}, "hmac": {"hmac"}}
        self.configmaps: dict[str, dict[str, str]] = {"users": {"list": "a\nb\n"}}
        self.accounts = {"pt-worker"}
        self.urls: dict[str, str | None] = {}

    async def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        return self.secrets.get(name)

    async def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.configmaps.get(name)

    async def service_account_exists(self, namespace: str, name: str) -> bool:
        return name in self.accounts

    async def probe_url(self, url: str) -> str | None:
        return self.urls.get(url)


def spec(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "audience": {
            "sources": [
                {"kind": "inline", "users": ["u1", "u2"]},
                {"kind": "configMap", "name": "users", "key": "list"},
                {"kind": "url", "url": "http://files/x.csv", "format": "csv"},
            ],
        },
        "message": {
            "channel": "webhook",
            "webhook": {"url": "http://sink/hook", "secretRef": {"name": "hmac"}},
            "template": {"title": "Hi", "body": "Hello {{ name }}"},
        },
    }
    base.update(over)
    return base


def run(s: dict[str, Any], fake: Fake, **kw: Any) -> Any:
    return asyncio.run(validate(s, "ns", fake, SETTINGS, **kw))


def test_a_good_spec_passes() -> None:
    assert run(spec(), Fake()).ok


def test_template_error_is_permanent_and_names_the_line() -> None:
    s = spec()
    s["message"]["template"]["body"] = "Hello\n{{ name "
    v = run(s, Fake())
    assert not v.ok and v.permanent and v.reason == "TemplateError"
    assert "body" in v.message and "line 2" in v.message


def test_schema_level_problem_is_permanent() -> None:
    s = spec()
    del s["message"]["webhook"]
    v = run(s, Fake())
    assert not v.ok and v.permanent and "webhook" in v.message


@pytest.mark.parametrize(
    ("mutate", "reason", "words"),
    [
        (lambda f: f.secrets.pop("hmac"), "SecretMissing", 'Secret "hmac"'),
        (lambda f: f.secrets.__setitem__("hmac", {"other"}), "SecretKeyMissing", '"hmac"'),
        (lambda f: f.secrets.pop("mongo"), "MongoSecretMissing", 'Secret "mongo"'),
        (lambda f: f.accounts.clear(), "WorkerServiceAccountMissing", "pt-worker"),
        (lambda f: f.configmaps.clear(), "ConfigMapMissing", 'ConfigMap "users"'),
        (lambda f: f.configmaps.__setitem__("users", {}), "ConfigMapKeyMissing", '"list"'),
        (
            lambda f: f.urls.__setitem__("http://files/x.csv", "HTTP 404"),
            "SourceUnreachable",
            "HTTP 404",
        ),
    ],
)
def test_missing_things_are_waited_out(mutate: Any, reason: str, words: str) -> None:
    fake = Fake()
    mutate(fake)
    v = run(spec(), fake)
    assert not v.ok and not v.permanent and v.reason == reason
    assert words in v.message


def test_url_probe_can_be_skipped() -> None:
    fake = Fake()
    fake.urls["http://files/x.csv"] = "timeout"
    assert run(spec(), fake, probe_urls=False).ok


def test_configmap_content_is_copied_by_source_index() -> None:
    s = spec()
    s["audience"]["exclude"] = [{"kind": "configMap", "name": "users", "key": "list"}]
    got = asyncio.run(configmap_contents(s, "ns", Fake()))
    assert got == {"1": "a\nb\n", "exclude.0": "a\nb\n"}


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (None, "ConfigMapMissing", 'ConfigMap "optouts" (spec.audience.exclude[0]) not found'),
        ({"other": "x"}, "ConfigMapKeyMissing", '(spec.audience.exclude[0]) has no key "list"'),
    ],
)
def test_a_configmap_gone_at_copy_time_is_an_error_not_an_empty_list(
    data: dict[str, str] | None, reason: str, words: str
) -> None:
    # Read as "", an exclusion list would exclude nobody: everyone on it would be sent to.
    fake = Fake()
    if data is not None:
        fake.configmaps["optouts"] = data
    s = spec()
    s["audience"]["exclude"] = [{"kind": "configMap", "name": "optouts", "key": "list"}]
    with pytest.raises(SourceGone) as gone:
        asyncio.run(configmap_contents(s, "ns", fake))
    v = gone.value.validation
    assert not v.ok and not v.permanent and v.reason == reason and words in v.message
    # The same condition as validation gives at creation.
    assert run(s, fake) == v


def test_configmap_copies_are_capped_with_a_clear_error() -> None:
    fake = Fake()
    half = "u\n" * (CONFIGMAP_COPY_LIMIT // 4)  # half the limit, in bytes
    fake.configmaps = {"a": {"list": half}, "b": {"list": half + "x\n"}}
    s = spec()
    s["audience"]["sources"][1] = {"kind": "configMap", "name": "a", "key": "list"}
    s["audience"]["exclude"] = [{"kind": "configMap", "name": "b", "key": "list"}]
    v = run(s, fake)
    assert not v.ok and not v.permanent and v.reason == "ConfigMapTooLarge"
    assert "spec.audience.exclude[0]" in v.message and "url or mongo" in v.message
    fake.configmaps["b"]["list"] = half  # exactly at the limit: accepted
    assert run(s, fake).ok


def test_probe_url_against_real_servers() -> None:
    """The operator's URL check (Kube.probe_url) over real connections: a success, an
    HTTP error and a port nobody listens on."""
    from pushtask_operator.kube import Kube
    from tests.support.sink import SinkThread, free_port

    kube = Kube()
    kube.probe_timeout = 5
    with SinkThread() as sink:
        base = sink.url.rsplit("/", 1)[0]
        ok = asyncio.run(kube.probe_url(f"{base}/_sink/health"))
        missing = asyncio.run(kube.probe_url(f"{base}/users.csv"))  # GET: no such route
    refused = asyncio.run(kube.probe_url(f"http://127.0.0.1:{free_port()}/users.csv"))
    assert ok is None
    assert missing is not None and missing.startswith("HTTP 4"), missing
    assert refused is not None and "Connect" in refused, refused


@pytest.mark.parametrize(
    ("message", "secret", "key"),
    [
        (
            {"channel": "fcm", "fcm": {"serviceAccountSecretRef": {"name": "firebase"}}},
            "firebase",
            "service-account.json",
        ),
        (
            {
                "channel": "apns",
                "apns": {
                    "keySecretRef": {"name": "apple"},
                    "keyId": "KEY1234567",
                    "teamId": "TEAM123456",
                    "topic": "com.example.app",
                },
            },
            "apple",
            "key.p8",
        ),
    ],
)
def test_mobile_credential_secrets_are_checked(
    message: dict[str, Any], secret: str, key: str
) -> None:
    s = spec()
    s["message"] = {**message, "template": {"body": "Hello"}}
    fake = Fake()
    v = run(s, fake)
    assert not v.ok and v.reason == "SecretMissing" and f'Secret "{secret}"' in v.message
    fake.secrets[secret] = {"other"}
    v = run(s, fake)
    assert not v.ok and v.reason == "SecretKeyMissing" and f'"{key}"' in v.message
    fake.secrets[secret] = {key}
    assert run(s, fake).ok
