"""pynetdicom associations as a requestor, without the race that loses a response.

pynetdicom (3.0.x) runs a reactor thread per association that takes any DIMSE message off
the association's queue unless it is paused. ``send_c_store`` pauses it by clearing an
``Event`` and polling ``_is_paused``, a flag the reactor sets just before it parks. After
one operation ends (the event set again), the flag stays ``True`` until the reactor thread
is next scheduled; the next ``send_c_store`` sees that stale ``True``, sends, and when the
peer answers before the reactor has run, the reactor wakes, finds the response on the
queue and drops it as an unexpected message. The sender then waits for its DIMSE timeout
and aborts. Eight associations in one process against a fast SCP (ours answers in about a
millisecond) lost a response in about half of the runs; the SCP had sent it.

``steady`` replaces the association's checkpoint with one that knows when the reactor is
parked at it, and ``pause`` waits for exactly that before pynetdicom's own pause runs, so
the flag it polls is never stale. Every operation the node sends as a requestor goes
through ``Requestor``.

A second race loses a rejection: when the peer's A-ASSOCIATE-RJ arrives and the reactor
closes the connection (as the rejection requires) before the requesting thread has checked
that the connection is up, pynetdicom takes the closed connection for a failed connect and
reports an abort. Against our own SCP, on the loopback, 20 to 37 of 200 rejections were
lost so. ``request`` associates with a handler that records the A-ASSOCIATE-RJ the reactor
received, so ``Requestor.rejection`` and ``is_rejected`` hold whichever thread won.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ

T = TypeVar("T")


class Checkpoint:
    """A drop-in for the reactor's ``threading.Event`` that also tells whether the reactor
    is parked at it: its wait and its state change under one lock, so a pause that sees
    the reactor parked with the checkpoint closed cannot be overtaken by a late wake-up."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = True
        self._parked = False

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._open = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            self._parked = True
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._open, timeout)
            finally:
                self._parked = False

    def pause(self, reactor: threading.Thread) -> None:
        """Close the checkpoint and return once the reactor is parked at it (or gone)."""
        with self._cond:
            self._open = False
            while not self._parked and reactor.is_alive():
                self._cond.wait(0.05)


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ's fields (PS3.8 9.3.4): ``result`` 1 permanent, 2 transient."""

    result: int
    source: int
    reason: int


def request(ae: AE, host: str, port: int, **kwargs: Any) -> Requestor:
    """``ae.associate`` (same arguments) as a ``Requestor`` that knows a rejection even
    when pynetdicom reports an abort for it."""
    received: list[Rejection] = []

    def on_pdu(event: evt.Event) -> None:
        pdu = event.pdu
        if isinstance(pdu, A_ASSOCIATE_RJ):
            received.append(
                Rejection(
                    int(pdu.result or 0), int(pdu.source or 0), int(pdu.reason_diagnostic or 0)
                )
            )

    handlers = [*kwargs.pop("evt_handlers", ()), (evt.EVT_PDU_RECV, on_pdu)]
    assoc = ae.associate(host, port, evt_handlers=handlers, **kwargs)
    return Requestor(assoc, received[0] if received else None)


class Requestor:
    """One association the node requested, each operation run with its reactor parked;
    ``rejection`` what the peer's A-ASSOCIATE-RJ said, if it sent one (``request``)."""

    def __init__(self, assoc: Association, rejection: Rejection | None = None) -> None:
        self.assoc = assoc
        self.rejection = rejection
        self._checkpoint = Checkpoint()
        assoc._reactor_checkpoint = self._checkpoint  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.assoc, name)

    @property
    def is_rejected(self) -> bool:
        return self.rejection is not None or bool(self.assoc.is_rejected)

    def _paused(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self._checkpoint.pause(self.assoc)
        try:
            return operation(*args, **kwargs)
        finally:
            self._checkpoint.set()

    def send_c_store(self, *args: Any, **kwargs: Any) -> Any:
        return self._paused(self.assoc.send_c_store, *args, **kwargs)

    def send_c_echo(self, *args: Any, **kwargs: Any) -> Any:
        return self._paused(self.assoc.send_c_echo, *args, **kwargs)

    def release(self) -> None:
        self._paused(self.assoc.release)
