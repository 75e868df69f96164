"""C-STORE SCU: send stored result objects to a destination and classify every outcome.

One association per destination per batch, proposing only the (SOP class, transfer syntax)
pairs being sent, each file sent as its stored bytes (no re-encoding). Every object ends in
one of three outcomes, so the outbox knows what to do next:

- ``DONE``: Success or Warning (PS3.4 B.2.3: 0x0000, 0x0001, 0xB000, 0xB006, 0xB007, 0x0107),
  and 0x0111 (Duplicate SOP Instance, PS3.7 C.4.1.1.4: the destination already holds the
  object; output UIDs are deterministic, so it is ours, re-sent after a sender died between
  the answer and recording it).
- ``RETRY``: the destination may accept later: 0xA7xx (out of resources), association
  rejected-transient, no connection (refused, unreachable, timeout), an aborted association
  or a missing response.
- ``FAILED``: sending again cannot help: 0xA9xx (data set does not match SOP class), 0xCxxx
  (cannot understand), 0x0122 (SOP class not supported) and other failures, permanent
  association rejections, a presentation context the destination refused.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from pydicom import dcmread
from pynetdicom import AE, _config

from scp.requestor import Requestor, request
from scp.tls import failure_reason
from scp.uids import uid_hash

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    DONE = "DONE"
    RETRY = "RETRY"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Destination:
    """Where results go: the peer's address and called AE title, and our calling AE title."""

    name: str
    host: str
    port: int
    ae_title: str
    calling_ae_title: str = "CTNODE"
    tls: ssl.SSLContext | None = None
    tls_hostname: str | None = None
    timeout: float = 30.0


@dataclass(frozen=True)
class Delivery:
    """What happened to one object."""

    path: Path
    sop_instance_uid: str
    outcome: Outcome
    status: int | None
    reason: str


_WARNINGS = {0x0001, 0x0107, 0xB000, 0xB006, 0xB007}
_DUPLICATE = 0x0111


def classify_status(status: int) -> tuple[Outcome, str]:
    """The outcome of a C-STORE response status (PS3.4 Annex B.2.3, PS3.7 Annex C)."""
    if status == 0x0000:
        return Outcome.DONE, "success"
    if status in _WARNINGS:
        return Outcome.DONE, f"warning 0x{status:04X}"
    if status == _DUPLICATE:
        return Outcome.DONE, "duplicate SOP instance 0x0111 (already delivered)"
    if 0xA700 <= status <= 0xA7FF:
        return Outcome.RETRY, f"out of resources 0x{status:04X}"
    if 0xA900 <= status <= 0xA9FF:
        return Outcome.FAILED, f"data set does not match SOP class 0x{status:04X}"
    if 0xC000 <= status <= 0xCFFF:
        return Outcome.FAILED, f"cannot understand 0x{status:04X}"
    if status == 0x0122:
        return Outcome.FAILED, "SOP class not supported 0x0122"
    return Outcome.FAILED, f"failure 0x{status:04X}"


@dataclass(frozen=True)
class _Object:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def store(paths: Sequence[Path], destination: Destination) -> list[Delivery]:
    """Send ``paths`` over one association; one ``Delivery`` per path, in order."""
    objects = [_read_meta(p) for p in paths]
    ae = AE(ae_title=destination.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout
    for pair in dict.fromkeys((o.sop_class_uid, o.transfer_syntax) for o in objects):
        ae.add_requested_context(*pair)
    tls_args = None
    handshake = _Handshake(destination.tls) if destination.tls is not None else None
    if handshake is not None:
        context = cast(ssl.SSLContext, handshake)  # pynetdicom only calls wrap_socket
        tls_args = (context, destination.tls_hostname or destination.host)
    try:
        assoc = request(
            ae, destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args
        )
    except (OSError, ssl.SSLError) as exc:
        return [_all(o, Outcome.RETRY, None, f"no connection: {exc}") for o in objects]
    if not assoc.is_established:
        outcome, reason = _association_failure(assoc)
        if handshake is not None and handshake.errors:
            reason = failure_reason(handshake.errors[-1])
            log.warning("TLS with %s refused: %s", destination.name, reason)
        return [_all(o, outcome, None, reason) for o in objects]

    accepted = {
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
    }
    deliveries: list[Delivery] = []
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        for obj in objects:
            if not assoc.is_established:
                deliveries.append(_all(obj, Outcome.RETRY, None, "association lost"))
                continue
            if (obj.sop_class_uid, obj.transfer_syntax) not in accepted:
                deliveries.append(
                    _all(obj, Outcome.FAILED, None, "destination refused the presentation context")
                )
                continue
            response = assoc.send_c_store(obj.path)
            status = getattr(response, "Status", None)
            if status is None:
                deliveries.append(_all(obj, Outcome.RETRY, None, "no response (timeout/abort)"))
                continue
            outcome, reason = classify_status(int(status))
            deliveries.append(_all(obj, outcome, int(status), reason))
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        if assoc.is_established:
            assoc.release()
    for delivery in deliveries:
        log.info(
            "sent %s to %s: %s (%s)",
            uid_hash(delivery.sop_instance_uid),
            destination.name,
            delivery.outcome,
            delivery.reason,
        )
    return deliveries


class _RecordingSocket(ssl.SSLSocket):
    """An ``SSLSocket`` that keeps the error its handshake failed with: pynetdicom logs it
    and aborts, and the delivery would only say "association aborted"."""

    errors: list[ssl.SSLError]

    def connect(self, address: Any) -> None:
        try:
            super().connect(address)
        except ssl.SSLError as exc:
            self.errors.append(exc)
            raise


class _Handshake:
    """Stands in for the destination's ``SSLContext`` for one association, so the TLS
    failure of that association (and no other sharing the context) can be told."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.errors: list[ssl.SSLError] = []

    def wrap_socket(self, sock: socket.socket, **kwargs: Any) -> ssl.SSLSocket:
        conn = self.context.wrap_socket(sock, **kwargs)
        conn.__class__ = _RecordingSocket
        cast(_RecordingSocket, conn).errors = self.errors
        return conn


def _association_failure(assoc: Requestor) -> tuple[Outcome, str]:
    rejection = assoc.rejection
    if rejection is not None:
        if rejection.result == 0x02:
            return Outcome.RETRY, f"association rejected (transient, reason {rejection.reason})"
        return Outcome.FAILED, f"association rejected (permanent, reason {rejection.reason})"
    primitive = getattr(getattr(assoc, "acceptor", None), "primitive", None)
    if getattr(primitive, "result", None) == 0x00:
        return Outcome.FAILED, "destination accepted none of the presentation contexts"
    if getattr(assoc, "is_aborted", False):
        return Outcome.RETRY, "association aborted"
    return Outcome.RETRY, "no association (refused, unreachable or timed out)"


def _read_meta(path: Path) -> _Object:
    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).file_meta
    return _Object(
        path,
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
    )


def _all(obj: _Object, outcome: Outcome, status: int | None, reason: str) -> Delivery:
    return Delivery(obj.path, obj.sop_instance_uid, outcome, status, reason)
