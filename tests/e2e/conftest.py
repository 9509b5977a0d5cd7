"""Fixtures every end-to-end module may use without importing them by name: the operator
suite's `env` (a release of the chart and a webhook sink) and `own_mongo` (a second
mongo-java-server of the test's own, to stop and start)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.release import on_devstack
from tests.e2e.test_operator_e2e import env  # noqa: F401
from tests.e2e.test_operator_resilience_e2e import OwnMongo


@pytest.fixture
def own_mongo(mongo_uri: str, tmp_path: Path) -> Iterator[OwnMongo]:
    # mongo_uri: devstack has built (and runs) mongo-java-server; this is a second one.
    on_devstack()
    server = OwnMongo(tmp_path / "data.mv")
    server.start()
    try:
        yield server
    finally:
        server.stop()
