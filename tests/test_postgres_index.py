"""The index over a real PostgreSQL server (``tests.postgres_server``) and, where the same
guarantee holds on one host, over SQLite with several connections as several processes would
hold: versioned migrations, idempotent indexing by two receivers, leases on jobs and
deliveries (a late result is refused), claims that pass each other, racing assembly ticks, a
server restart. The worker's own tests run here again over PostgreSQL. The analysis queue
over PostgreSQL (procrastinate) is tested in ``tests/test_queue.py``."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.assembler_tick import Assembly
from node.index import Index
from node.index.deliveries import Attempt, ResultObject, enqueue
from node.index.schema import TABLES
from node.recovery import recover
from scp.sink import ReceivedInstance
from scp.spool import Spool
from scp.validation import Identity
from tests.factory import ct_series
from tests.postgres_server import PostgresServer
from tests.test_worker import (  # the worker's tests, collected again over PostgreSQL
    receive,
    test_a_changed_series_is_reported_again_naming_the_old_report,
    test_a_job_waits_while_its_study_still_receives_and_sees_the_whole_study,
    test_crashing_analysis_fails_the_series_and_the_worker_goes_on,
    test_interrupted_job_runs_again_after_recovery,
    test_invalid_series_gets_its_reason_and_sends_nothing,
    test_not_selected_series_is_recorded_and_sends_nothing,
    test_reported_series_has_result_and_outbox_rows,
    test_series_changed_during_analysis_is_not_sent,
    test_stop_between_stages_gives_the_job_back,
)

__all__ = [
    "test_a_changed_series_is_reported_again_naming_the_old_report",
    "test_a_job_waits_while_its_study_still_receives_and_sees_the_whole_study",
    "test_crashing_analysis_fails_the_series_and_the_worker_goes_on",
    "test_interrupted_job_runs_again_after_recovery",
    "test_invalid_series_gets_its_reason_and_sends_nothing",
    "test_not_selected_series_is_recorded_and_sends_nothing",
    "test_reported_series_has_result_and_outbox_rows",
    "test_series_changed_during_analysis_is_not_sent",
    "test_stop_between_stages_gives_the_job_back",
]

Opener = Callable[..., Index]


@pytest.fixture
def env(tmp_path: Path, pg_url: str) -> Iterator[tuple[Index, Spool, Path]]:
    """The worker tests' environment, its index in PostgreSQL."""
    index = Index(tmp_path, url=pg_url)
    yield index, Spool(tmp_path), tmp_path / "results"
    index.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def open_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the index as one more process would (its own connections, its node id)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    yield from _opener(tmp_path, url)


@pytest.fixture
def open_sqlite(tmp_path: Path) -> Iterator[Opener]:
    """The same over SQLite only: there the ``jobs`` table is the queue and its leases the
    workers' liveness (over PostgreSQL procrastinate's heartbeats are: tests/test_queue.py)."""
    yield from _opener(tmp_path, "")


def _opener(tmp_path: Path, url: str) -> Iterator[Opener]:
    opened: list[Index] = []

    def open_(node_id: str, lease: float = 60.0) -> Index:
        index = Index(tmp_path, url=url, node_id=node_id, lease=lease)
        opened.append(index)
        return index

    yield open_
    for index in opened:
        index.close()


def test_migrations_are_recorded_once_and_match_the_sqlite_schema(pg_url: str) -> None:
    from node.index.postgres import apply_migrations, migrations  # noqa: PLC0415  # psycopg

    index = Index(Path("/nonexistent"), url=pg_url)
    recorded = index.query("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in recorded] == [(v, n) for v, n, _ in migrations()]
    assert recorded[0]["name"] == "0001_index.sql" and len(recorded) >= 2
    assert index.pool is not None
    with index.pool.pool.connection() as conn:
        assert apply_migrations(conn) == []  # a second host finds them applied
    for table, spec in TABLES.items():
        columns = index.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
            "ORDER BY ordinal_position",
            (table,),
        )
        assert [c["column_name"] for c in columns] == list(spec.columns), table
    index.close()


def _instances(seed: str, n: int) -> list[ReceivedInstance]:
    result = []
    for k, ds in enumerate(ct_series(n, 8, 8, seed=seed)):
        identity = Identity(
            ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID
        )
        relative = Spool.relative_path(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, f"{k:064x}"
        )
        result.append(ReceivedInstance(identity, ds, relative, f"{k:064x}", 1, "1.2", "SCU"))
    return result


def test_the_same_instances_at_two_receivers_are_indexed_once(open_index: Opener) -> None:
    first, second = open_index("receiver-a"), open_index("receiver-b")
    instances = _instances("twice", 12)
    errors: list[BaseException] = []

    def receive_all(index: Index, order: list[ReceivedInstance]) -> None:
        try:
            for k in range(0, len(order), 3):
                index.record_many(order[k : k + 3])
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=receive_all, args=(first, instances)),
        threading.Thread(target=receive_all, args=(second, instances[::-1])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    (series,) = first.query("SELECT instance_count, state FROM series")
    assert series == {"instance_count": 12, "state": "RECEIVING"}
    assert first.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 12


def _stable_job(index: Index, tmp_path: Path, seed: str) -> str:
    series = receive(index, Spool(tmp_path), seed)
    assert index.mark_stable(series, 3) is not None
    return series


def test_a_late_result_is_refused_once_the_lease_ran_out(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    slow, other = open_sqlite("worker-a", lease=0.3), open_sqlite("worker-b")
    _stable_job(slow, tmp_path, "late")
    job = slow.claim_job()
    assert job is not None and job.claim == 1 and slow.holds(job)
    assert other.claim_job() is None  # claimed and leased
    assert other.expire_leases() == 0
    time.sleep(0.5)  # worker-a stops renewing: its lease runs out
    assert other.expire_leases() == 1
    assert not slow.holds(job)
    again = other.claim_job()
    assert again is not None and again.id == job.id and again.claim == 2
    obj = [ResultObject("sr", "1.2.3", "x/1.sr.dcm")]
    late = slow.finish_job(job, "REPORTED", "", {"by": "a"}, {}, obj, lambda: ["pacs"], 0.0)
    assert late is False
    slow.requeue(job)  # a late stop changes nothing either
    assert other.query("SELECT state, owner FROM jobs")[0] == {
        "state": "running",
        "owner": "worker-b",
    }
    assert other.finish_job(again, "REPORTED", "", {"by": "b"}, {}, obj, lambda: ["pacs"], 0.0)
    assert other.query("SELECT result_json FROM results")[0]["result_json"] == '{"by": "b"}'
    assert other.query("SELECT COUNT(*) AS n FROM outbox")[0]["n"] == 1
    assert other.query("SELECT state FROM series")[0]["state"] == "REPORTED"


def test_renewed_leases_keep_the_job(open_sqlite: Opener, tmp_path: Path) -> None:
    worker, other = open_sqlite("worker-a", lease=0.4), open_sqlite("worker-b")
    _stable_job(worker, tmp_path, "renew")
    job = worker.claim_job()
    assert job is not None
    for _ in range(4):
        time.sleep(0.2)
        assert worker.renew_leases() == 1
        assert other.expire_leases() == 0
    assert worker.holds(job)


def test_restart_requeues_only_its_own_and_expired_jobs(open_index: Opener, tmp_path: Path) -> None:
    a, b = open_index("worker-a"), open_index("worker-b")
    _stable_job(a, tmp_path, "own1")
    _stable_job(a, tmp_path, "own2")
    assert a.claim_job() is not None and b.claim_job() is not None
    restarted = open_index("worker-a")
    assert restarted.requeue_interrupted() == 1  # worker-b's live claim is left alone
    owners = restarted.query("SELECT state, owner FROM jobs ORDER BY id")
    assert owners == [{"state": "queued", "owner": None}, {"state": "running", "owner": "worker-b"}]


def test_concurrent_claims_take_different_jobs(open_index: Opener, tmp_path: Path) -> None:
    seeder = open_index("assembler")
    for k in range(6):
        _stable_job(seeder, tmp_path, f"many{k}")
    workers = [open_index(f"worker-{k}") for k in range(3)]
    claimed: list[int] = []
    lock = threading.Lock()

    def claim_all(index: Index) -> None:
        while (job := index.claim_job()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [r["id"] for r in seeder.query("SELECT id FROM jobs ORDER BY id")]
    states = seeder.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
    assert states == [{"state": "running", "n": 6}]


def test_two_senders_claim_disjoint_rows_and_a_lost_lease_records_nothing(
    open_index: Opener,
) -> None:
    a, b = open_index("sender-a", lease=0.3), open_index("sender-b")
    with a.transaction() as conn:
        conn.execute(
            "INSERT INTO jobs (id, series_uid, study_uid, revision, state) "
            "VALUES (1, 's', 'st', 1, 'done')"
        )
        objects = [ResultObject("sc", f"1.2.{i}", f"j/{i}.dcm") for i in range(3)]
        enqueue(conn, 1, "s", objects, ["pacs"], 0.0)
    mine = a.due_deliveries(10.0)
    assert [r["id"] for r in mine] == [1, 2, 3]
    assert b.due_deliveries(10.0) == []
    time.sleep(0.5)  # sender-a dies after the PACS answered, before recording it
    taken = b.due_deliveries(10.0)
    assert [r["id"] for r in taken] == [1, 2, 3]  # sent again: the same SOP Instance UIDs
    a.record_attempts([Attempt(1, "DONE", 10.0, 0, "success")])
    assert a.query("SELECT attempts, owner FROM outbox WHERE id = 1")[0] == {
        "attempts": 0,
        "owner": "sender-b",
    }
    b.record_attempts([Attempt(r["id"], "DONE", 10.0, 0x0111, "duplicate") for r in taken])
    rows = b.query("SELECT state, attempts, owner FROM outbox ORDER BY id")
    assert rows == [{"state": "DONE", "attempts": 1, "owner": None}] * 3


def test_racing_assembly_ticks_queue_one_job_per_revision(
    open_index: Opener, tmp_path: Path
) -> None:
    receivers = [open_index(f"receiver-{k}") for k in range(2)]
    for k in range(4):
        receive(receivers[0], Spool(tmp_path), f"race{k}")
    ticks = [Assembly(index, stable_age=0.0) for index in receivers]
    barrier = threading.Barrier(len(ticks))
    queued: list[int] = []

    def tick(assembly: Assembly) -> None:
        barrier.wait()
        for _ in range(3):
            queued.extend(assembly.tick())

    threads = [threading.Thread(target=tick, args=(t,)) for t in ticks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs = receivers[0].query("SELECT series_uid, revision FROM jobs")
    assert len(jobs) == len(queued) == 4
    assert len({j["series_uid"] for j in jobs}) == 4


def test_one_host_holds_a_periodic_task_at_a_time(pg_url: str, tmp_path: Path) -> None:
    a, b = Index(tmp_path, url=pg_url), Index(tmp_path, url=pg_url)
    with a.exclusive("assembly") as first, b.exclusive("assembly") as second:
        assert first and not second
    with b.exclusive("assembly") as later:
        assert later
    a.close()
    b.close()


def test_the_index_carries_on_after_a_server_restart(
    postgres: PostgresServer, pg_url: str, tmp_path: Path
) -> None:
    index = Index(tmp_path, url=pg_url)
    instances = _instances("restart", 4)
    index.record_many(instances[:2])
    postgres.restart(down_for=0.5)
    index.record_many(instances[2:])  # the pool replaces its broken connections
    assert index.query("SELECT instance_count FROM series")[0]["instance_count"] == 4
    index.close()


def test_recovery_beside_other_receivers_keeps_young_unindexed_files(tmp_path: Path) -> None:
    """A file without a row may be another receiver's instance between its rename and its
    commit: with ``orphan_age`` only older ones (and older temp files) are removed."""
    spool, index = Spool(tmp_path), Index(tmp_path, node_id="receiver-b")
    spool.write_atomic("s/young.dcm", [b"being indexed by receiver-a"])
    spool.write_atomic("s/old.dcm", [b"never acknowledged"])
    (spool.tmp_dir / "young.part").write_bytes(b"receiving")
    (spool.tmp_dir / "old.part").write_bytes(b"interrupted")
    an_hour_ago = time.time() - 3600
    for old in (spool.path("s/old.dcm"), spool.tmp_dir / "old.part"):
        os.utime(old, (an_hour_ago, an_hour_ago))

    report = recover(index, spool, orphan_age=600.0)

    assert (report.temp_files_removed, report.orphans_removed) == (1, 1)
    assert sorted(spool.stored()) == ["s/young.dcm"]
    assert [p.name for p in spool.tmp_dir.iterdir()] == ["young.part"]
    index.close()


def test_features_read_a_postgresql_index(pg_url: str, tmp_path: Path) -> None:
    """``ctnode features DATA_DIR`` with ``[database] url``: the studies the node reported,
    from the shared index, their instances from the data directory's store."""
    from cli.features import _index_units  # noqa: PLC0415  # training's imports are heavy

    index, spool = Index(tmp_path, url=pg_url), Spool(tmp_path)
    series = receive(index, spool, "features")
    job = index.mark_stable(series, 3)
    with index.transaction() as conn:
        conn.execute(
            "INSERT INTO results (job_id, series_uid, study_uid, state, reason, result_json, "
            "timings_json, created) SELECT id, series_uid, study_uid, 'REPORTED', '', '{}', "
            "'{}', '' FROM jobs WHERE id = ?",
            (job,),
        )
    (unit,) = _index_units(tmp_path, pg_url)
    assert unit.stored == "{}" and len(unit.files) == 3
    assert all(f.is_file() and f.is_relative_to(spool.store_dir) for f in unit.files)
    index.close()
