import pytest

from pushtask_operator.settings import OperatorSettings, SettingsError, from_env


def test_defaults_from_an_empty_environment() -> None:
    s = from_env({})
    assert s == OperatorSettings()
    assert s.cluster_wide


def test_values_from_environment() -> None:
    s = from_env(
        {
            "PUSHTASK_NAMESPACES": "a, b,,c",
            "PUSHTASK_MONGO_SECRET": "m",
            "PUSHTASK_SEND_BUDGET": "500",
            "PUSHTASK_TIERS": '{"low": [0, 299], "batch": [300, 399], "high": [400, 1000]}',
            "PUSHTASK_DEGRADED_TIERS": "low=graceful,batch=immediate",
            "PUSHTASK_WORKER_RESOURCES": '{"limits": {"memory": "1Gi"}}',
            "PUSHTASK_LEASE_SECONDS": "12",
            "PUSHTASK_RUN_RETENTION": "5",
            "PUSHTASK_WORKER_ENV": '{"HTTPS_PROXY": "http://proxy:3128", "PUSHTASK_LOG_LEVEL": 1}',
        }
    )
    assert s.worker_env == {"HTTPS_PROXY": "http://proxy:3128", "PUSHTASK_LOG_LEVEL": "1"}
    assert s.run_retention == 5
    assert from_env({}).run_retention == 3
    assert s.namespaces == ("a", "b", "c") and not s.cluster_wide
    assert s.mongo_secret_name == "m"
    assert s.send_budget == 500
    assert s.degraded_tiers == {"low": "graceful", "batch": "immediate"}
    assert s.worker_resources == {"limits": {"memory": "1Gi"}}
    assert s.lease_seconds == 12
    assert s.degrade_for(0) == "graceful"
    assert s.degrade_for(350) == "immediate"
    assert s.degrade_for(900) is None


def test_null_maps_from_helm_are_empty() -> None:
    s = from_env({"PUSHTASK_DEGRADED_TIERS": "null", "PUSHTASK_WORKER_POD_LABELS": "{}"})
    assert s.degraded_tiers == {} and s.worker_pod_labels == {}


def test_off_lifts_a_degradation() -> None:
    s = from_env({"PUSHTASK_DEGRADED_TIERS": '{"low": "off", "normal": "graceful"}'})
    assert s.degraded_tiers == {"normal": "graceful"} and s.degrade_for(100) is None


def test_default_tiers() -> None:
    s = from_env({"PUSHTASK_DEGRADED_TIERS": "low=immediate"})
    assert s.tier_of(500) == "normal" and s.tier_of(100) == "low"
    assert s.degrade_for(100) == "immediate" and s.degrade_for(500) is None


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("PUSHTASK_DEGRADED_TIERS", "low=later", "graceful, immediate or"),
        ("PUSHTASK_DEGRADED_TIERS", "low", "key=value"),
        ("PUSHTASK_DEGRADED_TIERS", "nosuch=graceful", "unknown tier"),
        ("PUSHTASK_TIERS", "low=high", "expected a range"),
        ("PUSHTASK_TIERS", "low=9-1", "range is empty"),
        ("PUSHTASK_SEND_BUDGET", "lots", "not a number"),
        ("PUSHTASK_SEND_BUDGET", "-1", ">= 0"),
        ("PUSHTASK_RUN_RETENTION", "0", ">= 1"),
        ("PUSHTASK_WORKER_RESOURCES", "{bad", "not valid JSON"),
    ],
)
def test_bad_values_fail_loudly(key: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        from_env({key: value})


def test_fair_share_by_priority_is_off_unless_asked() -> None:
    assert from_env({}).fair_share_by_priority is False
    assert from_env({"PUSHTASK_FAIR_SHARE_BY_PRIORITY": "true"}).fair_share_by_priority
    assert not from_env({"PUSHTASK_FAIR_SHARE_BY_PRIORITY": "false"}).fair_share_by_priority
