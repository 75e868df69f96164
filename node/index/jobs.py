"""What the analysis jobs serve: the assembler queues a job when a series becomes STABLE, a
worker claims one (its series PROCESSING) and finishes it, in one transaction, with the
result row, the series' end state and the result's deliveries; start-up recovery queues
again what a crash interrupted."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from node.index.connection import Connection, utc_now
from node.index.deliveries import ResultObject, enqueue


@dataclass(frozen=True)
class Job:
    id: int
    series_uid: str
    study_uid: str
    revision: int
    deliver: bool = True


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
            conn.execute(
                "UPDATE jobs SET state = 'superseded', updated = ? "
                "WHERE series_uid = ? AND state = 'queued'",
                (now, series_uid),
            )
            cursor = conn.execute(
                "INSERT INTO jobs (series_uid, study_uid, revision, state, reason, created, "
                "updated, deliver) SELECT series_uid, study_uid, revision, 'queued', '', ?, ?, ? "
                "FROM series WHERE series_uid = ?",
                (now, now, int(deliver), series_uid),
            )
            return cursor.lastrowid

    def set_delivery(self, series_uid: str, deliver: bool) -> None:
        """Decide delivery for a series' queued job (one the assembler queued first)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET deliver = ? WHERE series_uid = ? AND state = 'queued'",
                (int(deliver), series_uid),
            )

    def requeue(self, job_id: int, series_uid: str, revision: int) -> None:
        """A job stopped between stages goes back to the queue, its series to STABLE (unless
        the series changed meanwhile: then a newer job exists and this one is superseded)."""
        now = utc_now()
        with self.transaction() as conn:
            back = conn.execute(
                "UPDATE series SET state = 'STABLE', state_changed = ? "
                "WHERE series_uid = ? AND revision = ? AND state = 'PROCESSING'",
                (now, series_uid, revision),
            ).rowcount
            conn.execute(
                "UPDATE jobs SET state = ?, updated = ? WHERE id = ?",
                ("queued" if back else "superseded", now, job_id),
            )

    def requeue_interrupted(self) -> int:
        """Jobs a crash interrupted run again: PROCESSING series go back to STABLE."""
        now = utc_now()
        with self.transaction() as conn:
            conn.execute(
                "UPDATE series SET state = 'STABLE', state_changed = ? WHERE state = 'PROCESSING'",
                (now,),
            )
            return conn.execute(
                "UPDATE jobs SET state = 'queued', updated = ? WHERE state = 'running'", (now,)
            ).rowcount

    def claim_job(self) -> Job | None:
        """The oldest queued job whose study has no series still receiving (selection
        needs the whole study): job ``running``, series PROCESSING, only if the series
        still has the job's revision (else the job is superseded and the next one tried)."""
        while True:
            with self.transaction() as conn:
                row = conn.execute(
                    "SELECT id, series_uid, study_uid, revision, deliver FROM jobs j "
                    "WHERE state = 'queued' "
                    "AND NOT EXISTS (SELECT 1 FROM series s WHERE s.study_uid = j.study_uid "
                    "AND s.state = 'RECEIVING') ORDER BY id LIMIT 1"
                ).fetchone()
                if row is None:
                    return None
                job = Job(row[0], row[1], row[2], row[3], bool(row[4]))
                claimed = conn.execute(
                    "UPDATE series SET state = 'PROCESSING', state_changed = ? "
                    "WHERE series_uid = ? AND revision = ? AND state = 'STABLE'",
                    (utc_now(), job.series_uid, job.revision),
                ).rowcount
                state = "running" if claimed else "superseded"
                conn.execute(
                    "UPDATE jobs SET state = ?, updated = ? WHERE id = ?",
                    (state, utc_now(), job.id),
                )
            if claimed:
                return job

    def study_files(self, job: Job) -> list[str]:
        """Paths (under the store) of the instances of the job's study that selection may
        choose from: every series no longer receiving, and the job's own."""
        return [
            r["path"]
            for r in self.query(
                "SELECT i.path FROM instances i JOIN series s ON s.series_uid = i.series_uid "
                "WHERE s.study_uid = ? AND (s.state != 'RECEIVING' OR s.series_uid = ?) "
                "ORDER BY i.series_uid, i.instance_number, i.path",
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
    ) -> None:
        """In one transaction: the result row, the job done, the series in ``state`` and a
        delivery per object per destination (when the job delivers). A series that changed
        while the job ran keeps its state: the job and its result are superseded."""
        stamp = utc_now()
        with self.transaction() as conn:
            current = conn.execute(
                "SELECT 1 FROM series WHERE series_uid = ? AND revision = ? "
                "AND state = 'PROCESSING'",
                (job.series_uid, job.revision),
            ).fetchone()
            job_state = "done" if current else "superseded"
            conn.execute(
                "INSERT OR REPLACE INTO results (job_id, series_uid, study_uid, state, reason, "
                "result_json, timings_json, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
                "UPDATE jobs SET state = ?, reason = ?, updated = ? WHERE id = ?",
                (job_state, reason, stamp, job.id),
            )
            if not current:
                return
            conn.execute(
                "UPDATE series SET state = ?, reason = ?, state_changed = ? WHERE series_uid = ?",
                (state, reason, stamp, job.series_uid),
            )
            if objects and job.deliver:
                enqueue(conn, job.id, job.series_uid, objects, destinations(), now)
