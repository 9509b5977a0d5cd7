"""The demo's campaign (devstack/demo.py): a spec the models accept at every audience size."""

from __future__ import annotations

import pytest

from devstack.demo import audience_size, manifest
from pushtask.models import MAX_INLINE_USERS, PushTaskSpec


def test_up_to_the_inline_cap_the_users_are_listed_inline() -> None:
    body = manifest("ns", "http://127.0.0.1:1/hook", MAX_INLINE_USERS, 2, 50.0)
    spec = PushTaskSpec.model_validate(body["spec"])
    (source,) = spec.audience.sources
    assert source.kind == "inline" and audience_size(body, MAX_INLINE_USERS) == MAX_INLINE_USERS
    assert spec.workers == 2 and spec.rate.per_second == 50.0


def test_above_the_cap_they_are_read_from_a_seeded_collection() -> None:
    users = MAX_INLINE_USERS + 1
    body = manifest("ns", "http://127.0.0.1:1/hook", users, 3, 500.0, audience_db="ns_audience")
    (source,) = PushTaskSpec.model_validate(body["spec"]).audience.sources
    assert source.kind == "mongo" and source.database == "ns_audience"
    assert source.collection == "users" and source.secret_ref is None  # the system's MongoDB
    assert audience_size(body, users) == users
    with pytest.raises(ValueError, match="seeded collection"):
        manifest("ns", "http://127.0.0.1:1/hook", users, 3, 500.0)


def test_zero_keeps_the_examples_own_users() -> None:
    body = manifest("ns", "http://127.0.0.1:1/hook", 0, 1, 10.0)
    assert audience_size(body, 0) == 3
