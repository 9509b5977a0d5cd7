"""The send budget's division: max-min fair (weighted), and what a task demands now."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushtask.fairshare import demand_now, max_min_fair


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


# -- properties of the allocation (hypothesis) --------------------------------------------

demand = st.one_of(st.floats(0, 1e6), st.just(math.inf))
tasks = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), demand, max_size=8)
weighted = tasks.flatmap(
    lambda d: st.tuples(st.just(d), st.fixed_dictionaries({k: st.floats(0.1, 10) for k in d}))
)


@settings(max_examples=300, deadline=None)
@given(budget=st.floats(0, 1e6), demands_weights=weighted, use_weights=st.booleans())
def test_allocation_properties(
    budget: float, demands_weights: tuple[dict[str, float], dict[str, float]], use_weights: bool
) -> None:
    demands, weights = demands_weights
    w = weights if use_weights else None
    got = max_min_fair(budget, demands, w)
    assert set(got) == set(demands)
    eps = 1e-6 * max(1.0, budget)
    # Never more than asked, never negative, never more than the budget in all.
    assert all(-eps <= got[k] <= demands[k] + eps for k in demands)
    total = sum(got.values())
    want = sum(demands.values())
    assert total <= budget + eps
    # Work-conserving: the budget is used up, or everyone has what they asked for.
    assert total >= min(budget, want) - eps * max(1, len(demands))
    # Max-min: a task that got less than it asked for got at least as much per unit of
    # weight as anyone else (nobody could be given more without taking from a poorer one).
    unit = {k: got[k] / (w[k] if w else 1.0) for k in demands}
    for k in demands:
        if got[k] < demands[k] - eps:
            assert all(unit[k] >= unit[o] - eps for o in demands), (k, got)


@given(budget=st.floats(1, 1e5), demands=tasks)
def test_equal_demands_get_equal_shares(budget: float, demands: dict[str, float]) -> None:
    same = dict.fromkeys(demands, 1e9)
    got = max_min_fair(budget, same)
    assert len({round(v, 6) for v in got.values()}) <= 1


def test_weights_split_the_rest_in_proportion() -> None:
    got = max_min_fair(900, {"low": 1000, "high": 1000, "small": 100}, {"low": 1, "high": 2})
    assert got == {"small": 100, "low": 800 / 3, "high": 1600 / 3}


def test_the_issue_example_100_400_400_then_450_each() -> None:
    assert max_min_fair(900, {"a": 100, "b": 1000, "c": 1000}) == {"a": 100, "b": 400, "c": 400}
    assert max_min_fair(900, {"b": 1000, "c": 1000}) == {"b": 450, "c": 450}


def test_demand_is_what_a_task_can_use_now() -> None:
    assert demand_now(1000, in_window=False, sending=True) == 0.0  # outside its window
    assert demand_now(1000, in_window=True, sending=False) == 0.0  # audience phase, held
    assert demand_now(1000, in_window=True, sending=True) == 1000
    # Not measured yet (a new run): its rate, not what its first seconds showed.
    assert demand_now(1000, in_window=True, sending=True, achieved=None, allocated=400) == 1000
    # Using its allocation: it may want more.
    assert demand_now(1000, in_window=True, sending=True, achieved=390, allocated=400) == 1000
    # Far below it (its workers or receiver limit it): what it achieves, plus headroom.
    assert demand_now(1000, in_window=True, sending=True, achieved=100, allocated=400) == 125
    assert demand_now(1000, in_window=True, sending=True, achieved=0, allocated=400) == 50


def test_budget_goes_to_a_task_only_as_others_let_go_of_it() -> None:
    from pushtask.fairshare import grantable, in_force

    assert grantable(300, 900, [450, 450]) == 0  # nothing free yet
    assert grantable(300, 900, [300, 450]) == 150  # part of it
    assert grantable(300, 900, [300, 300]) == 300
    assert grantable(300, 900, []) == 300
    assert grantable(300, 900, [1000]) == 0  # never negative
    # What a task's senders may use: its allocation, or more while one still reports more.
    assert in_force(300, [450, 300]) == 450
    assert in_force(300, []) == 300
    assert in_force(None, [120]) == 120
    assert in_force(None, []) == 0
