"""The outbox: backoff policy (pure) and delivery ticks against a scripted destination."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from config import OutboxSettings
from node.index import Index
from node.index.deliveries import ResultObject, enqueue
from node.outbox import Decision, Outbox, OutboxState, decide
from node.outbox import Outbox as RealOutbox
from scp.sender import Delivery, Destination, Outcome
from tests.factory import ct_series, write_series
from tests.node_process import free_port
from tests.test_sender import scripted_pacs

POLICY = OutboxSettings(max_attempts=4, max_age_hours=1.0, backoff_initial=10.0, backoff_max=25.0)


@pytest.mark.parametrize(
    ("outcome", "attempts", "age", "expected"),
    [
        (Outcome.DONE, 1, 0.0, Decision(OutboxState.DONE)),
        (Outcome.FAILED, 1, 0.0, Decision(OutboxState.FAILED)),
        (Outcome.RETRY, 1, 0.0, Decision(OutboxState.PENDING, 10.0)),
        (Outcome.RETRY, 2, 0.0, Decision(OutboxState.PENDING, 20.0)),
        (Outcome.RETRY, 3, 0.0, Decision(OutboxState.PENDING, 25.0)),
        (Outcome.RETRY, 4, 0.0, Decision(OutboxState.FAILED)),
        (Outcome.RETRY, 1, 3600.0, Decision(OutboxState.FAILED)),
    ],
)
def test_backoff_policy(outcome: Outcome, attempts: int, age: float, expected: Decision) -> None:
    assert decide(outcome, attempts, age, POLICY) == expected


class ScriptedSender:
    """Stands in for the network only where a test needs a destination to misbehave on cue;
    the real sender is tested against real peers in test_sender.py."""

    def __init__(self, outcomes: list[Outcome]) -> None:
        self.outcomes = outcomes
        self.calls: list[list[Path]] = []

    def __call__(self, paths: Sequence[Path], destination: Destination) -> list[Delivery]:
        self.calls.append(list(paths))
        outcome = self.outcomes.pop(0) if self.outcomes else Outcome.DONE
        return [Delivery(p, "1.2", outcome, None, f"scripted {outcome}") for p in paths]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup_outbox(tmp_path: Path, sender: ScriptedSender, clock: Clock) -> tuple[Index, Outbox]:
    index = Index(tmp_path)
    results = tmp_path / "results"
    paths = write_series(ct_series(2, 8, 8, seed="outbox"), results / "job1")
    with index.transaction() as conn:
        conn.execute(
            "INSERT INTO jobs (id, series_uid, study_uid, revision, state) "
            "VALUES (1, 's', 'st', 1, 'done')"
        )
        enqueue(
            conn,
            1,
            "s",
            [
                ResultObject("sc", f"1.2.{i}", str(p.relative_to(results)))
                for i, p in enumerate(paths)
            ],
            ["pacs"],
            clock(),
        )
    destination = Destination("pacs", "127.0.0.1", 1, "PACS")
    return index, Outbox(index, results, {"pacs": destination}, POLICY, sender=sender, clock=clock)


def states(index: Index) -> list[str]:
    return [r["state"] for r in index.query("SELECT state FROM outbox ORDER BY id")]


def test_pacs_down_then_up_delivers_once(tmp_path: Path) -> None:
    sender, clock = ScriptedSender([Outcome.RETRY, Outcome.RETRY]), Clock()
    index, outbox = setup_outbox(tmp_path, sender, clock)
    assert outbox.tick() == 2 and states(index) == ["PENDING", "PENDING"]
    assert outbox.tick() == 0  # not due yet: backing off
    clock.now += 10
    assert outbox.tick() == 2 and states(index) == ["PENDING", "PENDING"]
    clock.now += 19
    assert outbox.tick() == 0
    clock.now += 1
    assert outbox.tick() == 2 and states(index) == ["DONE", "DONE"]
    clock.now += 1000
    assert outbox.tick() == 0 and len(sender.calls) == 3
    assert [r["attempts"] for r in index.query("SELECT attempts FROM outbox")] == [3, 3]


def test_permanent_failure_is_visible_and_can_be_retried(tmp_path: Path) -> None:
    sender, clock = ScriptedSender([Outcome.FAILED]), Clock()
    index, outbox = setup_outbox(tmp_path, sender, clock)
    outbox.tick()
    assert states(index) == ["FAILED", "FAILED"]
    assert {r["reason"] for r in index.query("SELECT reason FROM outbox")} == {"scripted FAILED"}
    first_id = index.query("SELECT MIN(id) AS id FROM outbox")[0]["id"]
    assert outbox.retry([first_id]) == 1 and states(index) == ["PENDING", "FAILED"]
    outbox.tick()
    assert states(index) == ["DONE", "FAILED"]
    assert outbox.retry() == 1
    outbox.tick()
    assert states(index) == ["DONE", "DONE"]


def test_retries_stop_after_max_attempts(tmp_path: Path) -> None:
    sender, clock = ScriptedSender([Outcome.RETRY] * 10), Clock()
    index, outbox = setup_outbox(tmp_path, sender, clock)
    for _ in range(POLICY.max_attempts):
        outbox.tick()
        clock.now += POLICY.backoff_max
    assert states(index) == ["FAILED", "FAILED"]
    assert len(sender.calls) == POLICY.max_attempts


def test_unknown_destination_and_missing_file_fail(tmp_path: Path) -> None:
    sender, clock = ScriptedSender([]), Clock()
    index, outbox = setup_outbox(tmp_path, sender, clock)
    outbox.destinations = {}
    outbox.tick()
    assert states(index) == ["FAILED", "FAILED"] and sender.calls == []
    assert "no longer configured" in index.query("SELECT reason FROM outbox")[0]["reason"]
    outbox.destinations = {"pacs": Destination("pacs", "127.0.0.1", 1, "PACS")}
    (tmp_path / "results" / "job1" / "00000.dcm").unlink()
    outbox.retry()
    outbox.tick()
    assert states(index) == ["FAILED", "DONE"]


def test_real_destination_down_then_up_receives_each_object_once(tmp_path: Path) -> None:
    clock = Clock()
    index = Index(tmp_path)
    results = tmp_path / "results"
    paths = write_series(ct_series(3, 8, 8, seed="downup"), results / "job1")
    with index.transaction() as conn:
        enqueue(
            conn,
            1,
            "s",
            [
                ResultObject("sc", f"1.{i}", str(p.relative_to(results)))
                for i, p in enumerate(paths)
            ],
            ["pacs"],
            clock(),
        )
    port = free_port()
    outbox = RealOutbox(
        index,
        results,
        {"pacs": Destination("pacs", "127.0.0.1", port, "PACS", timeout=3)},
        POLICY,
        clock=clock,
    )
    outbox.tick()
    assert states(index) == ["PENDING"] * 3
    server, received = scripted_pacs([], port=port)
    try:
        clock.now += POLICY.backoff_initial
        outbox.tick()
        clock.now += 3600
        outbox.tick()
    finally:
        server.shutdown()
    assert states(index) == ["DONE"] * 3
    assert sorted(received) == sorted(
        str(ds.SOPInstanceUID) for ds in ct_series(3, 8, 8, seed="downup")
    )
