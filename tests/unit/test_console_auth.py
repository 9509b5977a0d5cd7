"""The console's bearer token: constant-time, required for every action, for reads only
when the release says so, and an unset token disables actions rather than opening them."""

from __future__ import annotations

from pushtask_console.auth import Auth


def test_the_token_is_required_and_compared_exactly() -> None:
    auth = Auth("s3cret\n")  # a Secret's value with a trailing newline still matches
    assert auth.configured
    assert auth.check("Bearer s3cret") is None
    assert auth.check("bearer s3cret") is None
    assert auth.check(None) is not None and "required" in (auth.check(None) or "")
    assert "required" in (auth.check("Basic s3cret") or "")
    assert "not valid" in (auth.check("Bearer s3cre") or "")
    assert "not valid" in (auth.check("Bearer s3cret2") or "")


def test_reads_are_open_unless_configured() -> None:
    assert Auth("t").check_read(None) is None
    closed = Auth("t", reads_need_token=True)
    assert closed.check_read(None) is not None
    assert closed.check_read("Bearer t") is None


def test_no_token_means_no_actions() -> None:
    auth = Auth("")
    assert not auth.configured
    assert "no token configured" in (auth.check("Bearer ") or "")
    assert "no token configured" in (auth.check("Bearer anything") or "")
