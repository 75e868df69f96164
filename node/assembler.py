"""Series assembly as a pure state machine: when has a series stopped receiving?

DICOM has no "end of series" message, so a series counts as complete (STABLE) once no
instance has arrived for ``stable_age`` seconds. ``step`` is pure, with the clock injected:
it takes what it watched before, the series the index reports as still receiving (each with
its revision, which every stored instance bumps), and the current monotonic time, and returns
what it now watches plus the series to mark STABLE. A late instance moves a STABLE series
back to RECEIVING in the index; it then reappears here with a new revision and is timed
afresh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Observed:
    """A receiving series as the index reports it; ``age`` is the time since its last
    instance by the wall clock, used only the first time the series is seen (after a
    restart the monotonic clock of the previous process is gone)."""

    series_uid: str
    revision: int
    age: float


@dataclass(frozen=True)
class Watch:
    revision: int
    changed_at: float


@dataclass(frozen=True)
class MarkStable:
    series_uid: str
    revision: int


def step(
    watched: Mapping[str, Watch],
    observed: Sequence[Observed],
    now: float,
    stable_age: float,
) -> tuple[dict[str, Watch], list[MarkStable]]:
    """Advance the assembler to ``now`` (monotonic seconds)."""
    state: dict[str, Watch] = {}
    actions: list[MarkStable] = []
    for series in observed:
        previous = watched.get(series.series_uid)
        if previous is None:
            watch = Watch(series.revision, now - max(0.0, series.age))
        elif previous.revision != series.revision:
            watch = Watch(series.revision, now)
        else:
            watch = previous
        if now - watch.changed_at >= stable_age:
            actions.append(MarkStable(series.series_uid, series.revision))
        else:
            state[series.series_uid] = watch
    return state, actions
