"""Who may hold a connection to the SCP: the limits on connections and associations.

Every accepted TCP connection costs a thread and a PDU buffer. Before it has sent its
A-ASSOCIATE-RQ (and finished a TLS handshake) a connection is *unassociated*: those have a
separate, small limit, in all and per peer address, so that connections that never
associate (a port scanner, a stuck peer, a flood) cannot take the slots of the peers that
do. An association then moves into the association limits, again in all and per address,
so that one busy or hostile peer cannot starve the others. The counts are in memory and
per process (``scp.processes`` multiplies them).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    unassociated: int
    unassociated_per_address: int
    associations: int
    associations_per_address: int


class Admission:
    """Thread-safe counts of the connections in each phase, by peer address."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._unassociated: Counter[str] = Counter()
        self._associated: Counter[str] = Counter()

    def connect(self, address: str) -> str | None:
        """Count a new connection as unassociated; why it is refused, or None."""
        with self._lock:
            if self._unassociated.total() >= self.limits.unassociated:
                return f"{self.limits.unassociated} unassociated connections (max_unassociated)"
            if self._unassociated[address] >= self.limits.unassociated_per_address:
                return (
                    f"{self.limits.unassociated_per_address} unassociated connections from "
                    "this address (max_unassociated_per_address)"
                )
            self._unassociated[address] += 1
            return None

    def associate(self, address: str) -> str | None:
        """Move a connection from unassociated to associated; why the association is
        refused (the connection stays unassociated until it closes), or None."""
        with self._lock:
            if self._associated.total() >= self.limits.associations:
                return f"{self.limits.associations} associations (max_associations)"
            if self._associated[address] >= self.limits.associations_per_address:
                return (
                    f"{self.limits.associations_per_address} associations from this address "
                    "(max_associations_per_address)"
                )
            _decrement(self._unassociated, address)
            self._associated[address] += 1
            return None

    def close(self, address: str, associated: bool) -> None:
        """A connection counted by ``connect`` (and ``associate``) has closed."""
        with self._lock:
            _decrement(self._associated if associated else self._unassociated, address)

    def counts(self) -> tuple[int, int]:
        """Unassociated connections and associations now."""
        with self._lock:
            return self._unassociated.total(), self._associated.total()


def _decrement(counter: Counter[str], address: str) -> None:
    counter[address] -= 1
    if counter[address] <= 0:
        del counter[address]
