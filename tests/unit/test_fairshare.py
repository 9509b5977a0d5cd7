import math

import pytest

from pushtask.fairshare import max_min_fair


def test_small_demand_gets_what_it_wants_rest_split_evenly() -> None:
    assert max_min_fair(100, {"a": 10, "b": 100, "c": 100}) == {"a": 10, "b": 45, "c": 45}


def test_everyone_satisfied_when_budget_is_large() -> None:
    assert max_min_fair(1000, {"a": 10, "b": 20}) == {"a": 10, "b": 20}


def test_even_split_when_all_want_more() -> None:
    assert max_min_fair(90, {"a": 100, "b": 200, "c": math.inf}) == {"a": 30, "b": 30, "c": 30}


def test_cascading_water_filling() -> None:
    got = max_min_fair(100, {"a": 5, "b": 20, "c": 1000, "d": 1000})
    assert got == {"a": 5, "b": 20, "c": 37.5, "d": 37.5}


def test_empty_and_zero() -> None:
    assert max_min_fair(100, {}) == {}
    assert max_min_fair(0, {"a": 5}) == {"a": 0}
    assert max_min_fair(10, {"a": -3, "b": 50}) == {"a": 0, "b": 10}


def test_unlimited_demands_share_everything() -> None:
    assert max_min_fair(10, {"a": math.inf, "b": math.inf}) == {"a": 5, "b": 5}


def test_negative_budget_rejected() -> None:
    with pytest.raises(ValueError):
        max_min_fair(-1, {"a": 1})


@pytest.mark.parametrize("budget", [0, 1, 7.5, 100, 1e6])
def test_invariants(budget: float) -> None:
    demands = {str(i): float(d) for i, d in enumerate([0, 1, 3, 3, 50, 400, 1e5])}
    got = max_min_fair(budget, demands)
    assert all(got[k] <= demands[k] + 1e-9 for k in demands)
    assert sum(got.values()) == pytest.approx(min(budget, sum(demands.values())))
    # Max-min: a task below its demand gets at least as much as every other task.
    for k, v in got.items():
        if v < demands[k] - 1e-9:
            assert all(v >= o - 1e-9 for o in got.values())
