"""The SCP's PDU reader over a real socket pair: PDUs however the bytes arrive, limits,
timeouts in the kernel, and a peer that goes away."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from scp.pdu_reader import PDUReader, PeerClosed
from scp.upper_layer import P_DATA_TF, RELEASE_RQ, ProtocolError, pdu


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_several_pdus_in_one_send_and_one_split_byte_by_byte(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    reader = PDUReader(ours, size=64)
    first, second, third = b"a" * 10, b"b" * 40, bytes(range(256)) * 3
    theirs.sendall(pdu(P_DATA_TF, first) + pdu(P_DATA_TF, second))
    assert [(k, bytes(b)) for k, b in (reader.next(1 << 20), reader.next(1 << 20))] == [
        (P_DATA_TF, first),
        (P_DATA_TF, second),
    ]

    def dribble() -> None:
        for byte in pdu(RELEASE_RQ, third):
            theirs.send(bytes([byte]))

    sender = threading.Thread(target=dribble)
    sender.start()
    kind, body = reader.next(1 << 20)  # longer than the 64-byte buffer: it grows
    sender.join()
    assert (kind, bytes(body)) == (RELEASE_RQ, third)


def test_pdu_over_the_limit_is_a_protocol_error(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(pdu(P_DATA_TF, b"x" * 100))
    with pytest.raises(ProtocolError, match="exceeds"):
        PDUReader(ours).next(100)


def test_silent_peer_times_out_in_the_kernel(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    reader = PDUReader(ours)
    reader.set_timeout(0.3)
    assert ours.gettimeout() is None  # no Python-level poll before each recv
    theirs.sendall(pdu(P_DATA_TF, b"abc")[:4])  # half a header, then nothing
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        reader.next(1 << 20)
    assert 0.2 < time.monotonic() - started < 5


def test_no_timeout_waits_for_the_peer(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    reader = PDUReader(ours)
    reader.set_timeout(0.2)
    reader.set_timeout(None)
    timer = threading.Timer(0.5, lambda: theirs.sendall(pdu(P_DATA_TF, b"late")))
    timer.start()
    kind, body = reader.next(1 << 20)
    timer.join()
    assert (kind, bytes(body)) == (P_DATA_TF, b"late")


def test_closed_peer(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(pdu(P_DATA_TF, b"abcdef")[:8])
    theirs.close()
    with pytest.raises(PeerClosed):
        PDUReader(ours).next(1 << 20)


def test_a_trickled_pdu_does_not_renew_its_deadline(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """One byte every 0.2 s always arrives within a 1 s wait, but the PDU as a whole must
    arrive within 1 s."""
    ours, theirs = pair
    stop = threading.Event()

    def trickle() -> None:
        for byte in pdu(P_DATA_TF, b"x" * 100):
            if stop.wait(0.2):
                return
            theirs.send(bytes([byte]))

    sender = threading.Thread(target=trickle)
    sender.start()
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            PDUReader(ours).next(1 << 20, timeout=1.0)
    finally:
        stop.set()
        sender.join()
    assert 0.9 < time.monotonic() - started < 1.5
