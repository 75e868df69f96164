"""What the deliveries serve: the outbox's rows, one per result object per destination,
written by the worker in the transaction that records the result (``enqueue``), claimed and
sent by a sender's outbox tick (under a lease, like jobs: ``node.index.jobs``), re-queued by
``ctnode retry`` and the dashboard."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from node.index.connection import Connection, Tx, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultObject:
    """A result file to deliver: its kind (sr, sc), SOP Instance UID, path under results/."""

    kind: str
    sop_instance_uid: str
    path: str


def _by_id(row: dict[str, Any]) -> int:
    return int(row["id"])


def enqueue(
    conn: Tx,
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
        """Claim the PENDING rows whose next attempt is due and that no other sender holds
        (or whose sender's lease ran out), oldest first: they are this sender's until its
        lease ends, renewed by its heartbeat. Rows this node id already holds are its own
        from before a restart (one tick runs at a time in a process), sent again."""
        epoch = self.dialect.epoch
        with self.transaction() as conn:
            rows = conn.execute(
                f"UPDATE outbox SET owner = ?, lease_until = {epoch} + ? WHERE id IN "
                "(SELECT id FROM outbox WHERE state = 'PENDING' AND next_attempt_epoch <= ? "
                "AND (owner IS NULL OR owner = ? OR lease_until IS NULL "
                f"OR lease_until < {epoch}) ORDER BY id{self.dialect.skip_locked}) "
                "RETURNING id, destination, path, attempts, created_epoch",
                (self.node_id, self.lease, now, self.node_id),
            ).fetchall()
        return sorted((dict(zip(row.keys(), row, strict=True)) for row in rows), key=_by_id)

    def record_attempts(self, attempts: Sequence[Attempt]) -> None:
        """What the attempts decided, for the rows this sender still holds; a row whose
        lease ran out meanwhile belongs to another sender now (which sends it again with
        the same SOP Instance UID: harmless) and is left to it."""
        stamp = utc_now()
        with self.transaction() as conn:
            for attempt in attempts:
                recorded = conn.execute(
                    "UPDATE outbox SET state = ?, attempts = attempts + 1, "
                    "next_attempt_epoch = ?, last_status = ?, reason = ?, updated = ?, "
                    "owner = NULL, lease_until = NULL WHERE id = ? AND owner = ?",
                    (
                        attempt.state,
                        attempt.next_attempt,
                        attempt.status,
                        attempt.reason,
                        stamp,
                        attempt.id,
                        self.node_id,
                    ),
                ).rowcount
                if not recorded:
                    log.warning("delivery %s: its lease ran out, attempt not recorded", attempt.id)

    def renew_delivery_leases(self) -> int:
        """The heartbeat: this sender still sends the rows it holds."""
        with self.transaction() as conn:
            return int(
                conn.execute(
                    f"UPDATE outbox SET lease_until = {self.dialect.epoch} + ? "
                    "WHERE state = 'PENDING' AND owner = ?",
                    (self.lease, self.node_id),
                ).rowcount
            )

    def mark_sent_series(self) -> None:
        """A REPORTED series whose latest job has every row delivered is SENT."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE series SET state = 'SENT', state_changed = ? WHERE state = 'REPORTED' "
                "AND series_uid IN (SELECT o.series_uid FROM outbox o GROUP BY o.job_id, "
                "o.series_uid HAVING SUM(CASE WHEN o.state = 'DONE' THEN 0 ELSE 1 END) = 0 "
                "AND o.job_id = (SELECT MAX(j.id) FROM jobs j WHERE j.series_uid = o.series_uid))",
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
            return int(
                conn.execute(
                    f"UPDATE outbox SET state = 'PENDING', attempts = 0, next_attempt_epoch = ?, "
                    f"updated = ?, created_epoch = ?, owner = NULL, lease_until = NULL, "
                    f"reason = 'retry requested' WHERE {where}",
                    params,
                ).rowcount
            )

    def deliveries(self, state: str, limit: int) -> list[dict[str, Any]]:
        """The newest rows in ``state`` (at most ``limit``, 1 to 1000), for the dashboard."""
        return self.query(
            "SELECT id, job_id, series_uid, kind, destination, state, attempts, last_status, "
            "reason, updated FROM outbox WHERE state = ? ORDER BY id DESC LIMIT ?",
            (state.upper(), max(1, min(limit, 1000))),
        )
