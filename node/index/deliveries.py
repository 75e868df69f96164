"""What the deliveries serve: the outbox's rows, one per result object per destination,
written by the worker in the transaction that records the result (``enqueue``), sent by the
outbox's tick, re-queued by ``ctnode retry`` and the dashboard."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from node.index.connection import Connection, utc_now


@dataclass(frozen=True)
class ResultObject:
    """A result file to deliver: its kind (sr, sc), SOP Instance UID, path under results/."""

    kind: str
    sop_instance_uid: str
    path: str


def enqueue(
    conn: sqlite3.Connection,
    job_id: int,
    series_uid: str,
    objects: Sequence[ResultObject],
    destinations: Sequence[str],
    now: float,
) -> int:
    """Write one PENDING row per object per destination, inside the caller's transaction."""
    stamp = utc_now()
    rows = [
        (job_id, series_uid, obj.kind, obj.sop_instance_uid, obj.path, name, now, now, stamp)
        for name in destinations
        for obj in objects
    ]
    conn.executemany(
        "INSERT INTO outbox (job_id, series_uid, kind, sop_instance_uid, path, destination, "
        "state, attempts, created_epoch, next_attempt_epoch, reason, updated) "
        "VALUES (?, ?, ?, ?, ?, ?, 'PENDING', 0, ?, ?, '', ?)",
        rows,
    )
    return len(rows)


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt decided for a row: its next state, when it is due again
    (epoch seconds), the DICOM status and the reason."""

    id: int
    state: str
    next_attempt: float
    status: int | None
    reason: str


class DeliveryQueries(Connection):
    def due_deliveries(self, now: float) -> list[dict[str, Any]]:
        """PENDING rows whose next attempt is due, oldest first."""
        return self.query(
            "SELECT id, destination, path, attempts, created_epoch FROM outbox "
            "WHERE state = 'PENDING' AND next_attempt_epoch <= ? ORDER BY id",
            (now,),
        )

    def record_attempts(self, attempts: Sequence[Attempt]) -> None:
        stamp = utc_now()
        with self.transaction() as conn:
            for attempt in attempts:
                conn.execute(
                    "UPDATE outbox SET state = ?, attempts = attempts + 1, "
                    "next_attempt_epoch = ?, last_status = ?, reason = ?, updated = ? "
                    "WHERE id = ?",
                    (
                        attempt.state,
                        attempt.next_attempt,
                        attempt.status,
                        attempt.reason,
                        stamp,
                        attempt.id,
                    ),
                )

    def mark_sent_series(self) -> None:
        """A REPORTED series whose latest job has every row delivered is SENT."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE series SET state = 'SENT', state_changed = ? WHERE state = 'REPORTED' "
                "AND series_uid IN (SELECT o.series_uid FROM outbox o GROUP BY o.job_id "
                "HAVING SUM(o.state != 'DONE') = 0 AND o.job_id = (SELECT MAX(j.id) FROM jobs "
                "j WHERE j.series_uid = o.series_uid))",
                (utc_now(),),
            )

    def retry_deliveries(self, ids: Sequence[int], now: float) -> int:
        """Re-queue FAILED rows (all of them when ``ids`` is empty); returns how many."""
        where = "state = 'FAILED'"
        params: tuple[object, ...] = (now, utc_now(), now)
        if ids:
            where += f" AND id IN ({', '.join('?' * len(ids))})"
            params += tuple(ids)
        with self.transaction() as conn:
            return conn.execute(
                f"UPDATE outbox SET state = 'PENDING', attempts = 0, next_attempt_epoch = ?, "
                f"updated = ?, created_epoch = ?, reason = 'retry requested' WHERE {where}",
                params,
            ).rowcount

    def deliveries(self, state: str, limit: int) -> list[dict[str, Any]]:
        """The newest rows in ``state`` (at most ``limit``, 1 to 1000), for the dashboard."""
        return self.query(
            "SELECT id, job_id, series_uid, kind, destination, state, attempts, last_status, "
            "reason, updated FROM outbox WHERE state = ? ORDER BY id DESC LIMIT ?",
            (state.upper(), max(1, min(limit, 1000))),
        )
