"""What the analysis jobs serve: the assembler queues a job when a series becomes STABLE, a
worker claims one (its series PROCESSING) and finishes it, in one transaction, with the
result row, the series' end state and the result's deliveries; start-up recovery queues
again what a crash interrupted.

On SQLite (one host) the ``jobs`` table is the queue itself. A claim is a lease: the job
names its owner (the node id of the worker's process) and the time its claim ends (the
database's clock), which the owner's heartbeat moves on (``renew_leases``). A job whose
lease ran out is queued again by any process (``expire_leases``), and a claim counter tells
the owner's late commit from the new one's: ``finish_job`` refuses a result whose claim is
no longer the job's (logged, nothing written).

On PostgreSQL the queue is procrastinate (``node.queue``): ``mark_stable`` defers a task
for the job in its own transaction, the task claims the row (``start_job``), liveness is
procrastinate's worker heartbeat (``release_task`` gives back a stalled worker's job), and
the same claim counter guards ``finish_job``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from node.index.connection import Connection, Tx, utc_now
from node.index.deliveries import ResultObject, enqueue
from scp.uids import uid_hash

if TYPE_CHECKING:
    from node.index.postgres import Transaction

log = logging.getLogger(__name__)


class StudyReceiving(Exception):
    """A series of the job's study is still receiving: selection needs the whole study."""


@dataclass(frozen=True)
class Job:
    """A claimed job; ``claim`` is the job's claim counter when this claim was made."""

    id: int
    series_uid: str
    study_uid: str
    revision: int
    deliver: bool = True
    claim: int = 0


class JobQueries(Connection):
    def mark_stable(self, series_uid: str, revision: int, *, deliver: bool = True) -> int | None:
        """Mark a series STABLE and queue an analysis job, unless it changed meanwhile
        (possibly in another process); returns the job id. Older queued jobs for the same
        series are superseded: only the newest revision is worth analysing. ``deliver``
        False keeps the results from the destinations (an HTTP upload that did not ask)."""
        now = utc_now()
        with self.transaction() as conn:
            changed = conn.execute(
                "UPDATE series SET state = 'STABLE', state_changed = ? "
                "WHERE series_uid = ? AND revision = ? AND state = 'RECEIVING'",
                (now, series_uid, revision),
            ).rowcount
            if not changed:
                return None
            superseded = conn.execute(
                "UPDATE jobs SET state = 'superseded', updated = ? "
                "WHERE series_uid = ? AND state = 'queued' RETURNING task_id",
                (now, series_uid),
            ).fetchall()
            job_id = int(
                conn.execute(
                    "INSERT INTO jobs (series_uid, study_uid, revision, state, reason, created, "
                    "updated, deliver) SELECT series_uid, study_uid, revision, 'queued', '', "
                    "?, ?, ? FROM series WHERE series_uid = ? RETURNING id",
                    (now, now, int(deliver), series_uid),
                ).fetchone()[0]
            )
            if self.tasks is not None:
                connection = cast("Transaction", conn).connection
                for (task_id,) in superseded:
                    if task_id is not None:
                        self.tasks.cancel(connection, task_id)
                conn.execute(
                    "UPDATE jobs SET task_id = ? WHERE id = ?",
                    (self.tasks.defer(connection, job_id, series_uid), job_id),
                )
            return job_id

    def set_delivery(self, series_uid: str, deliver: bool) -> None:
        """Decide delivery for a series' queued job (one the assembler queued first)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET deliver = ? WHERE series_uid = ? AND state = 'queued'",
                (int(deliver), series_uid),
            )

    def requeue(self, job: Job) -> None:
        """A job stopped between stages goes back to the queue, its series to STABLE (unless
        the series changed meanwhile: then a newer job exists and this one is superseded).
        A claim that is no longer the job's changes nothing."""
        now = utc_now()
        with self.transaction() as conn:
            if not self._holds(conn, job):
                return
            back = conn.execute(
                "UPDATE series SET state = 'STABLE', state_changed = ? "
                "WHERE series_uid = ? AND revision = ? AND state = 'PROCESSING'",
                (now, job.series_uid, job.revision),
            ).rowcount
            conn.execute(
                "UPDATE jobs SET state = ?, owner = NULL, lease_until = NULL, updated = ? "
                "WHERE id = ?",
                ("queued" if back else "superseded", now, job.id),
            )

    def requeue_interrupted(self) -> int:
        """At start-up: the jobs this process's node id was running when it died run again,
        and so do any whose lease ran out; another process's live claims are left alone.
        (On PostgreSQL only this node's own: the queue's heartbeats tell the others'.)"""
        if self.tasks is not None:
            return self._release("owner = ?", (self.node_id,))
        return self._release(
            "(owner IS NULL OR owner = ? OR lease_until IS NULL "
            f"OR lease_until < {self.dialect.epoch})",
            (self.node_id,),
        )

    def expire_leases(self) -> int:
        """Jobs whose owner stopped renewing its lease (died, hung, cut off) are queued
        again, their series back to STABLE; returns how many. Nothing on PostgreSQL, where
        the queue's recovery task does it (``release_task``)."""
        if self.tasks is not None:
            return 0
        return self._release(f"(lease_until IS NULL OR lease_until < {self.dialect.epoch})", ())

    def release_task(self, task_id: int) -> int:
        """The job that queue task ``task_id`` was running goes back to ``queued`` (its
        series to STABLE): the task's worker stopped beating and the task runs again."""
        return self._release("task_id = ?", (task_id,))

    def _release(self, which: str, params: tuple[Any, ...]) -> int:
        now = utc_now()
        with self.transaction() as conn:
            conn.execute(
                "UPDATE series SET state = 'STABLE', state_changed = ? WHERE state = "
                "'PROCESSING' AND series_uid IN (SELECT j.series_uid FROM jobs j WHERE "
                f"j.state = 'running' AND j.revision = series.revision AND {which})",
                (now, *params),
            )
            released = conn.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, "
                f"updated = ? WHERE state = 'running' AND {which} RETURNING id, series_uid",
                (now, *params),
            ).fetchall()
        for row in released:
            log.warning(
                "job %s for series %s: its claim ended without a result, queued again",
                row[0],
                uid_hash(row[1]),
            )
        return len(released)

    def renew_leases(self) -> int:
        """The heartbeat: this process still works on the jobs it holds; returns how many.
        Nothing on PostgreSQL: the queue's workers beat for their tasks."""
        if self.tasks is not None:
            return 0
        with self.transaction() as conn:
            return int(
                conn.execute(
                    f"UPDATE jobs SET lease_until = {self.dialect.epoch} + ? "
                    "WHERE state = 'running' AND owner = ?",
                    (self.lease, self.node_id),
                ).rowcount
            )

    def holds(self, job: Job) -> bool:
        """Whether ``job``'s claim is still the job's (a worker gives up early when not)."""
        rows = self.query(
            "SELECT 1 FROM jobs WHERE id = ? AND state = 'running' AND owner = ? AND claims = ?",
            (job.id, self.node_id, job.claim),
        )
        return bool(rows)

    def _holds(self, conn: Tx, job: Job) -> bool:
        row = conn.execute(
            "SELECT state, owner, claims FROM jobs WHERE id = ?" + self.dialect.lock, (job.id,)
        ).fetchone()
        return bool(row and row[0] == "running" and row[1] == self.node_id and row[2] == job.claim)

    def claim_job(self) -> Job | None:
        """The oldest queued job whose study has no series still receiving (selection
        needs the whole study): job ``running`` under this node's lease, series PROCESSING,
        only if the series still has the job's revision (else the job is superseded and the
        next one tried). Concurrent claims on PostgreSQL skip each other's rows."""
        while True:
            with self.transaction() as conn:
                row = conn.execute(
                    "SELECT id, series_uid, study_uid, revision, deliver FROM jobs j "
                    "WHERE state = 'queued' "
                    "AND NOT EXISTS (SELECT 1 FROM series s WHERE s.study_uid = j.study_uid "
                    "AND s.state = 'RECEIVING') ORDER BY id LIMIT 1" + self.dialect.skip_locked
                ).fetchone()
                if row is None:
                    return None
                claimed = conn.execute(
                    "UPDATE series SET state = 'PROCESSING', state_changed = ? "
                    "WHERE series_uid = ? AND revision = ? AND state = 'STABLE'",
                    (utc_now(), row[1], row[3]),
                ).rowcount
                if claimed:
                    (claim,) = conn.execute(
                        "UPDATE jobs SET state = 'running', owner = ?, lease_until = "
                        f"{self.dialect.epoch} + ?, claims = claims + 1, updated = ? "
                        "WHERE id = ? RETURNING claims",
                        (self.node_id, self.lease, utc_now(), row[0]),
                    ).fetchone()
                else:
                    conn.execute(
                        "UPDATE jobs SET state = 'superseded', updated = ? WHERE id = ?",
                        (utc_now(), row[0]),
                    )
            if claimed:
                return Job(row[0], row[1], row[2], row[3], bool(row[4]), int(claim))

    def start_job(self, job_id: int, task_id: int) -> Job | None:
        """Claim job ``job_id`` for queue task ``task_id`` (PostgreSQL, ``node.queue``): job
        ``running`` under this node with its claim number raised, series PROCESSING. None
        when the task has nothing to do: the job is done or superseded, another task
        carries it, or its series changed (then it is superseded here). Raises
        ``StudyReceiving`` while a series of the study is still receiving. A job still
        ``running`` under this task was a stalled worker's: this claim takes it over."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT series_uid, study_uid, revision, deliver FROM jobs "
                "WHERE id = ? AND task_id = ? AND state IN ('queued', 'running')"
                + self.dialect.lock,
                (job_id, task_id),
            ).fetchone()
            if row is None:
                return None
            receiving = conn.execute(
                "SELECT 1 FROM series WHERE study_uid = ? AND state = 'RECEIVING'", (row[1],)
            ).fetchone()
            if receiving:
                raise StudyReceiving(uid_hash(row[1]))
            now = utc_now()
            current = conn.execute(
                "UPDATE series SET state = 'PROCESSING', state_changed = ? WHERE series_uid = ? "
                "AND revision = ? AND state IN ('STABLE', 'PROCESSING')",
                (now, row[0], row[2]),
            ).rowcount
            if not current:
                conn.execute(
                    "UPDATE jobs SET state = 'superseded', owner = NULL, updated = ? WHERE id = ?",
                    (now, job_id),
                )
                return None
            (claim,) = conn.execute(
                "UPDATE jobs SET state = 'running', owner = ?, lease_until = NULL, "
                "claims = claims + 1, updated = ? WHERE id = ? RETURNING claims",
                (self.node_id, now, job_id),
            ).fetchone()
        return Job(job_id, row[0], row[1], row[2], bool(row[3]), int(claim))

    def study_files(self, job: Job) -> list[str]:
        """Paths (under the store) of the instances of the job's study that selection may
        choose from: every series no longer receiving, and the job's own."""
        return [
            r["path"]
            for r in self.query(
                "SELECT i.path FROM instances i JOIN series s ON s.series_uid = i.series_uid "
                "WHERE s.study_uid = ? AND (s.state != 'RECEIVING' OR s.series_uid = ?) "
                "ORDER BY i.series_uid, i.instance_number NULLS FIRST, i.path",
                (job.study_uid, job.series_uid),
            )
        ]

    def reported_jobs(self, job: Job) -> list[int]:
        """Earlier jobs of the job's series that ended REPORTED (sent or not)."""
        rows = self.query(
            "SELECT job_id FROM results WHERE series_uid = ? AND job_id < ? "
            "AND state = 'REPORTED' ORDER BY job_id",
            (job.series_uid, job.id),
        )
        return [r["job_id"] for r in rows]

    def finish_job(
        self,
        job: Job,
        state: str,
        reason: str,
        result: dict[str, Any],
        timings: dict[str, float],
        objects: Sequence[ResultObject],
        destinations: Callable[[], Sequence[str]],
        now: float,
    ) -> bool:
        """In one transaction: the result row, the job done, the series in ``state`` and a
        delivery per object per destination (when the job delivers). A series that changed
        while the job ran keeps its state: the job and its result are superseded. A claim
        that is no longer the job's (its lease ran out and the job was queued again) commits
        nothing: False, and the refusal is logged."""
        stamp = utc_now()
        with self.transaction() as conn:
            if not self._holds(conn, job):
                log.warning(
                    "job %s for series %s: late result refused (its lease ran out, the job "
                    "was queued again)",
                    job.id,
                    uid_hash(job.series_uid),
                    extra={"cid": f"job{job.id}"},
                )
                return False
            current = conn.execute(
                "SELECT 1 FROM series WHERE series_uid = ? AND revision = ? "
                "AND state = 'PROCESSING'" + self.dialect.lock,
                (job.series_uid, job.revision),
            ).fetchone()
            job_state = "done" if current else "superseded"
            conn.execute(
                "INSERT INTO results (job_id, series_uid, study_uid, state, reason, "
                "result_json, timings_json, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(job_id) DO UPDATE SET state = excluded.state, "
                "reason = excluded.reason, result_json = excluded.result_json, "
                "timings_json = excluded.timings_json, created = excluded.created",
                (
                    job.id,
                    job.series_uid,
                    job.study_uid,
                    state if current else "SUPERSEDED",
                    reason,
                    json.dumps(result),
                    json.dumps(timings),
                    stamp,
                ),
            )
            conn.execute(
                "UPDATE jobs SET state = ?, reason = ?, owner = NULL, lease_until = NULL, "
                "updated = ? WHERE id = ?",
                (job_state, reason, stamp, job.id),
            )
            if not current:
                return True
            conn.execute(
                "UPDATE series SET state = ?, reason = ?, state_changed = ? WHERE series_uid = ?",
                (state, reason, stamp, job.series_uid),
            )
            if objects and job.deliver:
                enqueue(conn, job.id, job.series_uid, objects, destinations(), now)
        return True
