"""What the SCP hands to whoever indexes instances: the node injects an implementation, so
the network edge knows nothing of the database (DESIGN.md, layers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from scp.header import HeaderValues
from scp.validation import Identity


@dataclass(frozen=True)
class StoredCopy:
    """The copy of an instance the index already holds."""

    sha256: str
    relative_path: str


@dataclass(frozen=True)
class ReceivedInstance:
    """A durable, validated instance: its file is in place when the sink sees it."""

    identity: Identity
    header: HeaderValues  # a pydicom Dataset or an scp.header.Header
    relative_path: str
    sha256: str
    size: int
    transfer_syntax: str
    calling_ae: str
    replaces: StoredCopy | None = None


@dataclass(frozen=True)
class Refusal:
    """An instance that was not stored: rejected with a status, or discarded by policy."""

    outcome: str  # "rejected" or "discarded"
    status: int
    reason: str
    sop_class_uid: str
    calling_ae: str


class InstanceSink(Protocol):
    def stored_copy(self, sop_instance_uid: str) -> StoredCopy | None:
        """The copy already indexed under this SOP Instance UID, if any."""
        ...

    def record(self, instance: ReceivedInstance) -> None:
        """Index ``instance`` durably (committed when this returns) or raise."""
        ...

    def record_many(self, instances: Sequence[ReceivedInstance]) -> None:
        """Index all of ``instances`` in one transaction (committed when this returns), or
        none of them and raise."""
        ...

    def refused(self, refusal: Refusal) -> None:
        """Count an instance that was not stored."""
        ...
