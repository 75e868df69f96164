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
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from config import DestinationSettings, OutboxSettings, ReturnAddress
from node.index import Index
from node.index.deliveries import Attempt
from scp.sender import Delivery, Destination, Outcome, store
from scp.tls import client_context

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
            context = client_context(
                ca_certificates=d.tls_ca_certificates,
                certificate=d.tls_certificate,
                private_key=d.tls_private_key,
                passphrase_file=d.tls_private_key_passphrase_file,
                profile=d.tls_profile,
                min_version=d.tls_min_version,
                section=f"destination {d.name}",
            )
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
            due = self.index.due_deliveries(now)
            by_destination: dict[str, list[dict[str, object]]] = defaultdict(list)
            for row in due:
                by_destination[str(row["destination"])].append(row)
            for name, rows in by_destination.items():
                self._send(name, rows, now)
            if due:
                self.index.mark_sent_series()
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
        self.index.record_attempts(
            [
                Attempt(
                    int(str(row["id"])),
                    decision.state,
                    now + (decision.retry_in or 0.0),
                    status,
                    reason,
                )
                for row, decision, status, reason in zip(
                    rows, decisions, statuses, reasons, strict=True
                )
            ]
        )
        for row, decision, reason in zip(rows, decisions, reasons, strict=True):
            if decision.state is OutboxState.FAILED:
                log.error("delivery %s to %s failed: %s", row["id"], row["destination"], reason)

    def retry(self, ids: Sequence[int] = ()) -> int:
        """Re-queue FAILED rows (all of them when ``ids`` is empty); returns how many."""
        return self.index.retry_deliveries(ids, self.clock())
