"""The outbox: one row per result object per destination, delivered by a scheduled tick.

Rows are written in the same transaction as the result they carry (by the worker), so a
crash never loses a delivery or sends a result that was not recorded. A tick sends every due
row, one association per destination, and applies ``decide``: DONE, a retry after an
exponentially growing delay, or FAILED with the reason (``ctnode retry`` re-queues). A send
interrupted by a crash leaves its rows PENDING: they are sent again, with the same SOP
Instance UIDs, and the PACS keeps one copy.
"""

from __future__ import annotations

import logging
import sqlite3
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from config import DestinationSettings, OutboxSettings, ReturnAddress
from node.index import Index, utc_now
from scp.sender import Delivery, Destination, Outcome, store

log = logging.getLogger(__name__)


class OutboxState(StrEnum):
    PENDING = "PENDING"
    DONE = "DONE"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Decision:
    state: OutboxState
    retry_in: float | None = None


def decide(outcome: Outcome, attempts: int, age: float, policy: OutboxSettings) -> Decision:
    """What a delivery outcome means for its row after ``attempts`` tries (pure).

    Retries wait ``backoff_initial * 2**(attempts - 1)`` seconds, capped at ``backoff_max``,
    and stop after ``max_attempts`` tries or ``max_age_hours``.
    """
    if outcome is Outcome.DONE:
        return Decision(OutboxState.DONE)
    if outcome is Outcome.FAILED:
        return Decision(OutboxState.FAILED)
    if attempts >= policy.max_attempts or age >= policy.max_age_hours * 3600:
        return Decision(OutboxState.FAILED)
    delay = min(policy.backoff_initial * 2 ** max(0, attempts - 1), policy.backoff_max)
    return Decision(OutboxState.PENDING, delay)


def destinations_from(
    configured: Sequence[DestinationSettings],
    returns: Sequence[ReturnAddress],
    calling_ae_title: str,
    timeout: float,
) -> dict[str, Destination]:
    """Sender destinations by name; return addresses are named ``return:<calling AE>``."""
    result = {}
    for d in configured:
        context = None
        if d.tls:
            context = ssl.create_default_context(cafile=d.tls_ca_certificates or None)
            if d.tls_certificate:
                context.load_cert_chain(d.tls_certificate, d.tls_private_key or None)
        result[d.name] = Destination(
            d.name,
            d.host,
            d.port,
            d.ae_title,
            d.calling_ae_title or calling_ae_title,
            context,
            d.host if d.tls else None,
            timeout,
        )
    for r in returns:
        name = f"return:{r.calling_ae_title}"
        result[name] = Destination(
            name, r.host, r.port, r.ae_title, calling_ae_title, timeout=timeout
        )
    return result


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


Sender = Callable[[Sequence[Path], Destination], list[Delivery]]


class Outbox:
    """Sends due rows; ``results_root`` is where the rows' relative paths live."""

    def __init__(
        self,
        index: Index,
        results_root: Path,
        destinations: Mapping[str, Destination],
        policy: OutboxSettings,
        *,
        sender: Sender = store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.results_root = results_root
        self.destinations = dict(destinations)
        self.policy = policy
        self.sender = sender
        self.clock = clock
        self._lock = threading.Lock()

    def tick(self) -> int:
        """Send every due row; returns how many rows were attempted."""
        with self._lock:
            now = self.clock()
            due = self.index.query(
                "SELECT id, destination, path, attempts, created_epoch FROM outbox "
                "WHERE state = 'PENDING' AND next_attempt_epoch <= ? ORDER BY id",
                (now,),
            )
            by_destination: dict[str, list[dict[str, object]]] = defaultdict(list)
            for row in due:
                by_destination[str(row["destination"])].append(row)
            for name, rows in by_destination.items():
                self._send(name, rows, now)
            if due:
                self._mark_sent_series()
            return len(due)

    def _send(self, name: str, rows: list[dict[str, object]], now: float) -> None:
        destination = self.destinations.get(name)
        if destination is None:
            self._finish(
                rows,
                [Decision(OutboxState.FAILED)] * len(rows),
                [None] * len(rows),
                [f"destination {name!r} is no longer configured"] * len(rows),
                now,
            )
            return
        paths = [self.results_root / str(row["path"]) for row in rows]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            log.error("%d result files missing for %s", len(missing), name)
        present = [(row, path) for row, path in zip(rows, paths, strict=True) if path.is_file()]
        deliveries = self.sender([p for _, p in present], destination) if present else []
        decisions, statuses, reasons = [], [], []
        for (row, _), delivery in zip(present, deliveries, strict=True):
            attempts = int(str(row["attempts"])) + 1
            age = now - float(str(row["created_epoch"]))
            decisions.append(decide(delivery.outcome, attempts, age, self.policy))
            statuses.append(delivery.status)
            reasons.append(delivery.reason)
        absent = [row for row, path in zip(rows, paths, strict=True) if not path.is_file()]
        self._finish(
            [r for r, _ in present] + absent,
            decisions + [Decision(OutboxState.FAILED)] * len(absent),
            statuses + [None] * len(absent),
            reasons + ["result file missing"] * len(absent),
            now,
        )

    def _finish(
        self,
        rows: Sequence[Mapping[str, object]],
        decisions: Sequence[Decision],
        statuses: Sequence[int | None],
        reasons: Sequence[str],
        now: float,
    ) -> None:
        stamp = utc_now()
        with self.index.transaction() as conn:
            for row, decision, status, reason in zip(
                rows, decisions, statuses, reasons, strict=True
            ):
                conn.execute(
                    "UPDATE outbox SET state = ?, attempts = attempts + 1, "
                    "next_attempt_epoch = ?, last_status = ?, reason = ?, updated = ? "
                    "WHERE id = ?",
                    (
                        decision.state,
                        now + (decision.retry_in or 0.0),
                        status,
                        reason,
                        stamp,
                        row["id"],
                    ),
                )
                if decision.state is OutboxState.FAILED:
                    log.error("delivery %s to %s failed: %s", row["id"], row["destination"], reason)

    def _mark_sent_series(self) -> None:
        """A REPORTED series whose latest job has every row delivered is SENT."""
        with self.index.transaction() as conn:
            conn.execute(
                "UPDATE series SET state = 'SENT', state_changed = ? WHERE state = 'REPORTED' "
                "AND series_uid IN (SELECT o.series_uid FROM outbox o GROUP BY o.job_id "
                "HAVING SUM(o.state != 'DONE') = 0 AND o.job_id = (SELECT MAX(j.id) FROM jobs "
                "j WHERE j.series_uid = o.series_uid))",
                (utc_now(),),
            )

    def retry(self, ids: Sequence[int] = ()) -> int:
        """Re-queue FAILED rows (all of them when ``ids`` is empty); returns how many."""
        now = self.clock()
        where = "state = 'FAILED'"
        params: tuple[object, ...] = (now, utc_now(), now)
        if ids:
            where += f" AND id IN ({', '.join('?' * len(ids))})"
            params += tuple(ids)
        with self.index.transaction() as conn:
            return conn.execute(
                f"UPDATE outbox SET state = 'PENDING', attempts = 0, next_attempt_epoch = ?, "
                f"updated = ?, created_epoch = ?, reason = 'retry requested' WHERE {where}",
                params,
            ).rowcount
