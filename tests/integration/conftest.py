"""Fixtures shared by the worker's integration tests."""

import secrets
from collections.abc import Iterator

import pytest

from tests.support.workers import db_uri, drop_db


@pytest.fixture
def uri(mongo_uri: str) -> Iterator[str]:
    """A fresh database on the MongoDB-wire server for one test, dropped afterwards.
    (test_store.py overrides it to run on both servers.)"""
    u = db_uri(mongo_uri, f"w_{secrets.token_hex(5)}")
    yield u
    drop_db(u)
