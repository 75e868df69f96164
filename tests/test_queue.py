"""The analysis queue over a real PostgreSQL server: procrastinate (``node.queue``).

The index defers a task in the transaction that queues a job; procrastinate workers of ours
(``QueueWorkers``) run it, woken by NOTIFY; a task whose study still receives runs again
later; a stalled worker's job is released and its task queued again, and neither its late
result nor its late word to procrastinate changes anything; a periodic task registered by
two processes runs once per tick; one ``ctnode serve`` over PostgreSQL takes a study from
C-STORE to the PACS."""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from node.index import Index
from node.index.deliveries import ResultObject
from node.worker import Worker
from scp.spool import Spool
from tests.cluster import Host, RecordingPacs, store, wait_until
from tests.phantoms import chest_phantom
from tests.test_worker import SummaryPipeline, receive

pytest.importorskip("procrastinate", reason="procrastinate is the 'postgres' extra")
from node.queue import (  # after the skip: the module needs procrastinate
    ANALYSE,
    MAINTENANCE_QUEUE,
    QueueWorkers,
    analyse,
    cron_every,
)


@pytest.fixture
def opened(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., Index]]:
    indexes: list[Index] = []

    def open_(node_id: str) -> Index:
        indexes.append(Index(tmp_path, url=pg_url, node_id=node_id))
        return indexes[-1]

    yield open_
    for index in indexes:
        index.close()


@pytest.fixture
def queues(pg_url: str) -> Iterator[Callable[..., QueueWorkers]]:
    started: list[QueueWorkers] = []

    def make(node_id: str, poll: float = 60.0, lease: float = 2.0) -> QueueWorkers:
        queue = QueueWorkers(pg_url, node_id, heartbeat=0.5, lease=lease, poll=poll, grace=5.0)
        started.append(queue)
        return queue

    yield make
    for queue in started:
        assert queue.stop()


def tasks(index: Index) -> list[dict[str, Any]]:
    return index.query(
        "SELECT id, status, task_name, args, lock FROM procrastinate_jobs ORDER BY id"
    )


def test_a_job_and_its_task_are_queued_together(
    opened: Callable[..., Index], tmp_path: Path
) -> None:
    index = opened("receiver")
    series = receive(index, Spool(tmp_path), "defer")
    first = index.mark_stable(series, 3)
    assert first is not None
    (task,) = tasks(index)
    assert task["task_name"] == ANALYSE and task["status"] == "todo"
    assert task["args"] == {"job": first}
    assert task["lock"].startswith("series-") and series not in task["lock"]  # a hash
    assert index.query("SELECT task_id FROM jobs")[0]["task_id"] == task["id"]
    assert index.mark_stable(series, 3) is None  # no longer RECEIVING: no job, no task
    assert len(tasks(index)) == 1
    # a newer revision supersedes the queued job and cancels its waiting task
    with index.transaction() as conn:
        conn.execute("UPDATE series SET state = 'RECEIVING', revision = 4")
    second = index.mark_stable(series, 4)
    assert second is not None
    assert [t["status"] for t in tasks(index)] == ["cancelled", "todo"]
    assert tasks(index)[1]["args"] == {"job": second}


def test_a_queued_job_is_analysed_at_once_by_an_idle_worker(
    opened: Callable[..., Index], queues: Callable[..., QueueWorkers], tmp_path: Path
) -> None:
    """NOTIFY wakes a worker waiting out a minute's poll; the finished task is deleted (the
    index's job row keeps the history)."""
    index, spool = opened("worker-a"), Spool(tmp_path)
    worker = Worker(index, spool.store_dir, tmp_path / "results", SummaryPipeline(), lambda _: [])
    queue = queues("worker-a", poll=60.0)
    queue.analyse_with(partial(analyse, index, worker, 60.0), 1)
    queue.start()
    wait_until(
        "the worker to listen", lambda: index.query("SELECT id FROM procrastinate_workers"), 20
    )
    time.sleep(1.0)
    series = receive(index, spool, "wake")
    queued = time.monotonic()
    index.mark_stable(series, 3)

    def reported() -> bool:
        return bool(index.query("SELECT state FROM series")[0]["state"] == "REPORTED")

    wait_until("the series to be reported", reported, 15.0)
    assert time.monotonic() - queued < 15.0  # far below the 60 s poll
    assert index.query("SELECT state, owner, claims FROM jobs") == [
        {"state": "done", "owner": None, "claims": 1}
    ]
    wait_until("the finished task to be deleted", lambda: not tasks(index), 20)


def test_a_task_waits_while_its_study_still_receives(
    opened: Callable[..., Index], queues: Callable[..., QueueWorkers], tmp_path: Path
) -> None:
    index, spool = opened("worker-a"), Spool(tmp_path)
    pipeline = SummaryPipeline()
    worker = Worker(index, spool.store_dir, tmp_path / "results", pipeline, lambda _: [])
    first = receive(index, spool, "busy1", study_uid="1.2.826.0.1.777")
    receive(index, spool, "busy2", study_uid="1.2.826.0.1.777")  # still receiving
    index.mark_stable(first, 3)
    queue = queues("worker-a", poll=0.3)
    queue.analyse_with(partial(analyse, index, worker, 0.3), 1)
    queue.start()

    def waiting() -> bool:
        return bool(tasks(index)[0]["status"] == "todo" and pipeline.seen == [])

    wait_until("the task to wait", waiting, 20)
    time.sleep(1.5)  # it runs again every 0.3 s and finds the study still receiving
    assert pipeline.seen == [] and index.query("SELECT state FROM jobs")[0]["state"] == "queued"
    with index.transaction() as conn:
        conn.execute("UPDATE series SET state = 'STABLE' WHERE series_uid != ?", (first,))
    wait_until("the job to run", lambda: pipeline.seen, 20)
    assert pipeline.seen == [6]  # it saw the whole study


def _stall(index: Index, task_id: int) -> int:
    """A procrastinate worker that took task ``task_id`` and stopped beating (the process
    froze): its id."""
    with index.transaction() as conn:
        (worker_id,) = conn.execute(
            "INSERT INTO procrastinate_workers (last_heartbeat) "
            "VALUES (now() - interval '1 hour') RETURNING id"
        ).fetchone()
        conn.execute(
            "UPDATE procrastinate_jobs SET status = 'doing', worker_id = ? WHERE id = ?",
            (worker_id, task_id),
        )
    return int(worker_id)


def test_a_stalled_workers_job_runs_elsewhere_and_its_late_word_changes_nothing(
    opened: Callable[..., Index], queues: Callable[..., QueueWorkers], tmp_path: Path
) -> None:
    frozen, live, spool = opened("worker-frozen"), opened("worker-live"), Spool(tmp_path)
    series = receive(frozen, spool, "stall")
    job_id = frozen.mark_stable(series, 3)
    assert job_id is not None
    (task,) = tasks(frozen)
    stalled_worker = _stall(frozen, task["id"])
    job = frozen.start_job(job_id, task["id"])  # it claimed the job, then froze
    assert job is not None and job.claim == 1

    worker = Worker(live, spool.store_dir, tmp_path / "results", SummaryPipeline(), lambda _: [])
    queue = queues("worker-live", poll=0.5, lease=2.0)
    queue.analyse_with(partial(analyse, live, worker, 0.5), 1)
    queue.recover_stalled(live.release_task)
    queue.start()

    def sent_by_live() -> bool:
        rows = live.query("SELECT state, claims FROM jobs")
        return rows == [{"state": "done", "claims": 2}]

    wait_until("the live worker to take the job over and finish it", sent_by_live, 30.0)
    assert live.query("SELECT state FROM series")[0]["state"] == "REPORTED"
    # the frozen worker wakes: its result is refused, its stop changes nothing
    obj = [ResultObject("sr", "1.2.3", "x/1.sr.dcm")]
    assert not frozen.finish_job(job, "REPORTED", "", {"by": "frozen"}, {}, obj, list, 0.0)
    frozen.requeue(job)
    assert live.query("SELECT state, owner FROM jobs") == [{"state": "done", "owner": None}]
    assert live.query("SELECT COUNT(*) AS n FROM results")[0]["n"] == 1
    # and procrastinate forgot it, so its word about the task is ignored
    assert not frozen.query("SELECT id FROM procrastinate_workers WHERE id = ?", (stalled_worker,))


def test_a_worker_ends_or_retries_only_a_task_that_is_still_its_own(
    opened: Callable[..., Index], pg_url: str, tmp_path: Path
) -> None:
    """``FencedJobManager``: a worker that comes back after its task was queued again does
    not mark it finished (nor queue it again) under the worker that took it over."""
    import asyncio  # noqa: PLC0415

    from procrastinate.jobs import Status  # noqa: PLC0415

    index = opened("receiver")
    series = receive(index, Spool(tmp_path), "fence")
    index.mark_stable(series, 3)
    (task,) = tasks(index)
    old = _stall(index, task["id"])
    new = _stall(index, task["id"])  # taken over: now another worker's
    queue = QueueWorkers(pg_url, "w", heartbeat=0.5, lease=2.0, poll=1.0, grace=1.0)
    manager = queue.app.job_manager

    async def late_words() -> list[str]:
        async with queue.app.open_async():
            [job] = [j async for j in _jobs(manager, task["id"])]
            stale = job.evolve(worker_id=old)
            await manager.finish_job(stale, Status.SUCCEEDED, delete_job=True)
            await manager.retry_job(stale, retry_at=datetime.datetime.now(datetime.UTC))
            after_stale = [t["status"] for t in tasks(index)]
            await manager.finish_job(job.evolve(worker_id=new), Status.SUCCEEDED, delete_job=False)
            return [*after_stale, *(t["status"] for t in tasks(index))]

    assert asyncio.run(late_words()) == ["doing", "succeeded"]


async def _jobs(manager: Any, task_id: int) -> Any:
    for job in await manager.list_jobs_async(id=task_id):
        yield job


def test_a_periodic_task_of_two_processes_runs_once_per_tick(
    opened: Callable[..., Index], queues: Callable[..., QueueWorkers]
) -> None:
    opened("receiver-a")  # the index applies the schema, procrastinate's included
    ran: list[tuple[str, float]] = []
    lock = threading.Lock()
    for name in ("receiver-a", "receiver-b"):
        queue = queues(name)

        def tick(name: str = name) -> None:
            with lock:
                ran.append((name, time.time()))

        queue.every("test.tick", 1.0, MAINTENANCE_QUEUE, tick)
        queue.start()
    time.sleep(6.0)
    assert 3 <= len(ran) <= 7  # once a second; two runs a second if each deferred its own


def test_cron_every_whole_seconds() -> None:
    assert cron_every(1.0) == "* * * * * */1"
    assert cron_every(0.2) == "* * * * * */1"
    assert cron_every(10.0) == "* * * * * */10"
    assert cron_every(600.0) == "* * * * * */59"


@pytest.mark.slow
def test_one_process_over_postgresql_takes_a_study_from_the_scanner_to_the_pacs(
    pg_url: str, tmp_path: Path
) -> None:
    """``ctnode serve`` (role ``all``) over PostgreSQL: its receiver's periodic assembly, its
    worker's analysis task and its sender, the queue procrastinate's; SIGTERM stops it."""
    pacs = RecordingPacs()
    env = {
        "CTNODE_DATABASE__URL": pg_url,
        "CTNODE_STORAGE__DATA_DIR": str(tmp_path / "data"),
        "CTNODE_STORAGE__FSYNC": "false",
        "CTNODE_ASSEMBLY__STABLE_AGE": "1",
        "CTNODE_CLUSTER__HEARTBEAT": "1",
        "CTNODE_OUTBOX__TICK": "0.5",
        "CTNODE_DESTINATIONS": json.dumps([pacs.destination]),
    }
    node = Host("all", "solo", env, tmp_path)
    index: Index | None = None
    try:
        node.start()
        index = Index(tmp_path / "data", url=pg_url, node_id="test")
        wait_until("the node to listen", partial(node.ready, index), 60)
        files = chest_phantom(tmp_path / "study", "solo")
        assert len(store(node.port, files)) == len(files)
        sent = partial(index.query, "SELECT state FROM series WHERE state = 'SENT'")
        wait_until("the series to be sent", sent, 180)
        delivered = {
            r["sop_instance_uid"] for r in index.query("SELECT sop_instance_uid FROM outbox")
        }
        assert delivered and set(pacs.received) == delivered
        (job,) = index.query("SELECT state, task_id FROM jobs")
        assert job["state"] == "done" and job["task_id"] is not None
        assert node.stop() == 0, node.log_text()[-3000:]
        assert "Traceback" not in node.log_text(), node.log_text()
    finally:
        node.stop()
        pacs.stop()
        if index is not None:
            index.close()
