"""A DICOM peer over a raw socket that can break every rule: for the SCP's limit tests and
``benchmarks/hostile.py``. It speaks through ``scp.upper_layer``'s encoders, so a
well-formed PDU here is the same bytes a conforming requestor sends."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from scp import upper_layer as ul
from tests import command_sets

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = command_sets.VERIFICATION
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class Answer:
    """The PDU the SCP answered with (``kind`` 0: it closed the connection)."""

    kind: int
    body: bytes

    @property
    def abort(self) -> tuple[int, int] | None:
        """(source, reason) of an A-ABORT."""
        return (self.body[2], self.body[3]) if self.kind == ul.ABORT else None

    @property
    def rejection(self) -> tuple[int, int, int] | None:
        """(result, source, reason) of an A-ASSOCIATE-RJ."""
        return tuple(self.body[1:4]) if self.kind == ul.ASSOCIATE_RJ else None  # type: ignore[return-value]

    @property
    def status(self) -> int | None:
        """The Status of a DIMSE response in a P-DATA-TF."""
        if self.kind != ul.P_DATA_TF:
            return None
        _, _, fragment = next(ul.pdv_items(self.body))
        command = ul.parse_command(bytes(fragment))
        status: int = struct.unpack("<H", command.extra[0x0900])[0]
        return status


def connect(port: int, source: str = "127.0.0.1", timeout: float = 30.0) -> socket.socket:
    """A TCP connection from ``source`` (any 127.x.y.z address: a peer of its own)."""
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_answer(sock: socket.socket) -> Answer:
    """The next PDU, or kind 0 when the SCP closed (or reset) the connection."""
    try:
        header = _read_exactly(sock, 6)
        kind, length = ul.parse_header(header)
        return Answer(kind, _read_exactly(sock, length))
    except (ConnectionError, EOFError):
        return Answer(0, b"")


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def associate_rq(
    contexts: tuple[tuple[int, str], ...] = ((1, CT),), calling: str = "HOSTILE", **fields: object
) -> bytes:
    request = ul.AssociateRequest(
        1,
        "CTNODE",
        calling,
        ul.APPLICATION_CONTEXT,
        tuple(ul.ProposedContext(cid, sop, (EXPLICIT_LE,)) for cid, sop in contexts),
        1 << 16,
        **fields,  # type: ignore[arg-type]
    )
    return ul.associate_rq(request)


def associate(
    port: int, contexts: tuple[tuple[int, str], ...] = ((1, CT),), source: str = "127.0.0.1"
) -> tuple[socket.socket, Answer]:
    sock = connect(port, source)
    sock.sendall(associate_rq(contexts))
    return sock, read_answer(sock)


def pdv(context_id: int, control: int, payload: bytes) -> bytes:
    return struct.pack(">IBB", len(payload) + 2, context_id, control) + payload


def p_data(*pdvs: bytes) -> bytes:
    return ul.pdu(ul.P_DATA_TF, b"".join(pdvs))


def store_command(sop_instance: str, sop_class: str = CT, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set announcing a data set."""
    return command_sets.c_store_rq(message_id, sop_class, sop_instance)


def echo_command(message_id: int = 1) -> bytes:
    return command_sets.c_echo_rq(message_id)


def encoded(ds: Dataset) -> bytes:
    """The data set as a requestor sends it: explicit VR little endian, no file meta."""
    buffer = BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def store(sock: socket.socket, ds: Dataset, context_id: int = 1, message_id: int = 1) -> Answer:
    """One well-formed C-STORE of ``ds``, in PDUs of 64 kB; the SCP's answer."""
    data, size = encoded(ds), 1 << 16
    sock.sendall(
        p_data(pdv(context_id, 0x03, store_command(str(ds.SOPInstanceUID), message_id=message_id)))
    )
    for start in range(0, len(data), size):
        last = 0x02 if start + size >= len(data) else 0x00
        sock.sendall(p_data(pdv(context_id, last, data[start : start + size])))
    return read_answer(sock)


def trickle(sock: socket.socket, data: bytes, interval: float, limit: float) -> float:
    """Send ``data`` a byte at a time every ``interval`` seconds until the SCP closes the
    connection or ``limit`` seconds pass; the seconds it took the SCP to give up."""
    started = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        if time.monotonic() - started > limit:
            break
        time.sleep(interval)
        if _closed(sock):
            break
    return time.monotonic() - started


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (``VmHWM``: its peak), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)
