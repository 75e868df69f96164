"""The series assembler as a pure state machine with an injected clock."""

from __future__ import annotations

from node.assembler import MarkStable, Observed, Watch, step

AGE = 30.0


def test_series_becomes_stable_after_quiet_period() -> None:
    state, actions = step({}, [Observed("s1", 5, age=0.0)], now=100.0, stable_age=AGE)
    assert actions == [] and state == {"s1": Watch(5, 100.0)}
    state, actions = step(state, [Observed("s1", 5, age=10.0)], now=129.9, stable_age=AGE)
    assert actions == []
    state, actions = step(state, [Observed("s1", 5, age=30.0)], now=130.0, stable_age=AGE)
    assert actions == [MarkStable("s1", 5)] and state == {}


def test_new_instance_restarts_the_clock() -> None:
    state, _ = step({}, [Observed("s1", 1, age=0.0)], now=0.0, stable_age=AGE)
    state, actions = step(state, [Observed("s1", 2, age=0.0)], now=25.0, stable_age=AGE)
    assert actions == [] and state["s1"] == Watch(2, 25.0)
    _, actions = step(state, [Observed("s1", 2, age=29.0)], now=54.0, stable_age=AGE)
    assert actions == []
    _, actions = step(state, [Observed("s1", 2, age=30.0)], now=55.0, stable_age=AGE)
    assert actions == [MarkStable("s1", 2)]


def test_wall_clock_age_counts_only_for_a_series_seen_first_time() -> None:
    # After a restart a series that was quiet for 40 s is stable at once...
    _, actions = step({}, [Observed("old", 3, age=40.0)], now=5.0, stable_age=AGE)
    assert actions == [MarkStable("old", 3)]
    # ...but a series already watched is timed by the monotonic clock alone, so a wall
    # clock jump cannot make it stable early.
    state = {"s": Watch(3, 5.0)}
    _, actions = step(state, [Observed("s", 3, age=3600.0)], now=6.0, stable_age=AGE)
    assert actions == []


def test_series_no_longer_receiving_are_forgotten_and_reopened_ones_retimed() -> None:
    state = {"gone": Watch(1, 0.0), "s": Watch(4, 0.0)}
    state, actions = step(state, [Observed("s", 4, age=1.0)], now=1.0, stable_age=AGE)
    assert set(state) == {"s"} and actions == []
    # A late instance sends a STABLE series back to RECEIVING with a new revision.
    state, actions = step({}, [Observed("late", 9, age=0.0)], now=500.0, stable_age=AGE)
    assert state == {"late": Watch(9, 500.0)} and actions == []


def test_independent_series() -> None:
    observed = [Observed("a", 1, age=0.0), Observed("b", 1, age=0.0)]
    state, _ = step({}, observed, now=0.0, stable_age=AGE)
    state, actions = step(
        state, [Observed("a", 1, 0), Observed("b", 2, 0)], now=20.0, stable_age=AGE
    )
    _, actions = step(state, [Observed("a", 1, 0), Observed("b", 2, 0)], now=31.0, stable_age=AGE)
    assert actions == [MarkStable("a", 1)]
