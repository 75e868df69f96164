"""Reading PDUs off an association's connection with as few system calls as possible.

Profiling ``ctnode serve`` under DCMTK's ``storescu`` (strace, per 0.5 MB instance) found 12
``recv`` calls and 13 ``poll`` calls: one ``recv`` for each PDU's 6-byte header and at
least one for its body, and a ``poll`` before every ``recv`` because Python implements a
socket timeout that way. Each system call also hands the GIL to another association's
thread and back. This reader asks the kernel for as much as its buffer holds, so one
``recv`` usually brings a PDU's header with its body and often the next PDU's too, and it
puts timeouts into the kernel (``SO_RCVTIMEO``/``SO_SNDTIMEO``) instead, so a ``recv`` is one
system call. TLS connections keep Python's timeouts: ``ssl`` needs them.

A timeout here is a deadline for a whole PDU: a peer that sends one byte every few seconds
does not renew it (each further ``recv`` of the same PDU waits only for what is left), so
a trickle cannot hold a connection longer than the timeout per PDU. The buffer starts
small and grows only as far as the PDU limit a caller passes, so an unassociated
connection holds kilobytes, not the megabyte an association's largest PDU needs.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time

from scp.upper_layer import ProtocolError, parse_header

_HEADER = 6


class PeerClosed(ConnectionError):
    """The peer closed the connection."""


class PDUReader:
    """PDUs of one connection, each body a view into the reader's buffer that stays valid
    only until the next call of ``next``: callers use a body (write it, hash it, copy it)
    before they read on."""

    def __init__(self, conn: socket.socket, size: int = 1 << 16) -> None:
        self.conn = conn
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0
        self._timeout: float | None = None
        self._receive_timeout: float | None = None
        self._timeout_set = False
        self._kernel_timeouts = not isinstance(conn, ssl.SSLSocket)
        if self._kernel_timeouts:
            conn.settimeout(None)

    def set_timeout(self, seconds: float | None) -> None:
        """Limit every later single wait for the peer (receiving and sending) to
        ``seconds``; None or 0: no limit. ``recv``/``send`` past it raise ``TimeoutError``."""
        seconds = seconds or None
        if self._timeout_set and seconds == self._timeout:
            return
        self._timeout, self._timeout_set = seconds, True
        self._receive_timeout = seconds
        if not self._kernel_timeouts:
            self.conn.settimeout(seconds)
            return
        interval = _interval(seconds)
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)

    def _shorten_receive_timeout(self, left: float) -> None:
        """Cut the wait of the next ``recv`` to ``left`` seconds, the time to a deadline.
        Only when that is a tenth or more below the wait set: a PDU that arrives at speed
        costs no system call for it, and a trickle overruns its deadline by a tenth at
        most."""
        current = self._receive_timeout
        if current is not None and left > 0.9 * current:
            return
        self._receive_timeout = left
        self._timeout_set = False  # the next set_timeout sets both again
        if self._kernel_timeouts:
            self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _interval(left))
        else:
            self.conn.settimeout(left)

    def sendall(self, data: bytes) -> None:
        try:
            self.conn.sendall(data)
        except BlockingIOError as exc:  # SO_SNDTIMEO ran out
            raise TimeoutError("sending to the peer timed out") from exc

    def next(self, limit: int, timeout: float | None = None) -> tuple[int, memoryview]:
        """The next PDU's type and body, complete within ``timeout`` seconds (None: no
        limit, or what ``set_timeout`` set); ``ProtocolError`` if it is longer than
        ``limit`` (header included), ``TimeoutError`` past the deadline."""
        if timeout:
            self.set_timeout(timeout)
        deadline = time.monotonic() + timeout if timeout else None
        self._fill(_HEADER, limit, deadline)
        kind, length = parse_header(bytes(self._view[self._start : self._start + _HEADER]))
        if length + _HEADER > limit:
            raise ProtocolError(f"PDU of {length} bytes exceeds the negotiated maximum")
        self._fill(_HEADER + length, limit, deadline)
        start = self._start + _HEADER
        self._start = start + length
        return kind, self._view[start : start + length]

    def _fill(self, needed: int, limit: int, deadline: float | None) -> None:
        """At least ``needed`` unread bytes in the buffer, from ``_start`` on, before
        ``deadline``: every wait after the first is cut to the time left."""
        if self._end - self._start >= needed:
            return
        if self._start + needed > len(self._buffer):
            self._make_room(needed, limit)
        first = True
        while self._end - self._start < needed:
            if deadline is not None and not first:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the peer did not send a whole PDU in time")
                self._shorten_receive_timeout(left)
            first = False
            try:
                count = self.conn.recv_into(self._view[self._end :])
            except BlockingIOError as exc:  # SO_RCVTIMEO ran out
                raise TimeoutError("receiving from the peer timed out") from exc
            if count == 0:
                raise PeerClosed("peer closed the connection")
            self._end += count

    def _make_room(self, needed: int, limit: int) -> None:
        """Move the unread bytes to the front, into a larger buffer (at most ``limit``) if
        ``needed`` does not fit (a new one: bytes handed out as views keep the old one
        alive)."""
        unread = self._end - self._start
        if needed > len(self._buffer):
            buffer = bytearray(max(needed, min(2 * len(self._buffer), limit)))
            buffer[:unread] = self._view[self._start : self._end]
            self._buffer, self._view = buffer, memoryview(buffer)
        else:
            self._view[:unread] = self._view[self._start : self._end]
        self._start, self._end = 0, unread


def _interval(seconds: float | None) -> bytes:
    """A ``struct timeval`` for SO_RCVTIMEO/SO_SNDTIMEO (0: no limit)."""
    whole = int(seconds or 0)
    return struct.pack("ll", whole, int(((seconds or 0) - whole) * 1e6))
