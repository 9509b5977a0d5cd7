import kopf

from pushtask_operator.main import _args, configure_kopf, register
from pushtask_operator.settings import OperatorSettings


def test_registers_reconcile_wakeups_delete_and_test_templates() -> None:
    registry = kopf.OperatorRegistry()
    register(registry, OperatorSettings(progress_interval=3))
    changing = registry._changing.get_all_handlers()
    # kopf names a field handler by its id and field.
    assert {h.id.split("/")[0] for h in changing} == {"reconcile", "forget", "test-template"}
    # A test send's request for a pod template: each new value of its annotation.
    (asked,) = [h for h in changing if h.id.startswith("test-template/")]
    assert asked.field == ("metadata", "annotations", "test.pushtask.dev/template-request")
    assert asked.timeout == 30.0  # no retries once the tool has stopped waiting
    # One daemon per task that sleeps until its next event, not a timer polling every task.
    (daemon,) = registry._spawning.get_all_handlers()
    assert type(daemon).__name__ == "DaemonHandler" and daemon.id == "wakeups"
    (forget,) = [h for h in changing if h.id == "forget"]
    # The finalizer keeps a deleted task until its run data is deleted from MongoDB.
    assert forget.requires_finalizer is True


def test_kopf_settings_are_deliberate() -> None:
    s = kopf.OperatorSettings()
    configure_kopf(s, OperatorSettings())
    assert s.watching.server_timeout and s.watching.client_timeout
    assert s.watching.client_timeout > s.watching.server_timeout
    assert s.posting.level >= 30
    assert isinstance(s.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert s.peering.mandatory and not s.scanning.disabled
    namespaced = kopf.OperatorSettings()
    configure_kopf(namespaced, OperatorSettings(namespaces=("a",)))
    assert namespaced.scanning.disabled


def test_command_line() -> None:
    a = _args(["--namespace", "a", "-n", "b", "--peering", "p", "--liveness", "http://x/h"])
    assert a.namespace == ["a", "b"] and a.peering == "p" and a.command == "run"
    assert _args(["selftest"]).command == "selftest"
