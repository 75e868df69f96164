"""Association negotiation (PS3.7 Annex D.3.3) compared with DCMTK's storescp, byte by byte.

A raw-socket requestor sends the same A-ASSOCIATE-RQ to DCMTK's ``storescp`` and to our
node, reads both A-ASSOCIATE-ACs item by item, and then uses each association: a C-ECHO, a
C-STORE of a small synthetic CT where the negotiated roles let the requestor be the
C-STORE SCU, and an orderly release. Each sub-item is proposed on its own: SCP/SCU role
selection (D.3.3.4), the asynchronous operations window (D.3.3.3), user identity with and
without a positive response requested (D.3.3.7), SOP class extended negotiation (D.3.3.5)
and a requestor maximum PDU length of 0, unlimited (D.1).

What DCMTK 3.6.7's storescp answered when these tests were written: the presentation
contexts, its maximum length (16384), implementation class UID and version, and no other
sub-item for any of the proposals: no role selection, no asynchronous operations window,
no user identity response, no extended negotiation. Each of those omissions conforms (an
acceptor that does not take part in an optional negotiation leaves its sub-item out and
the defaults apply). Where ours leaves a sub-item out too, the test asserts the same
presence and absence; where ours answers one, the test's docstring says why, and the test
asserts that both answers mean the same for the association or, for role selection
proposed as SCP only, what ours means instead.

DCMTK is a real peer here, as in CI: ``/usr/bin/storescp``, never the ``storescp`` of
pynetdicom's console scripts that a virtualenv puts first on PATH. Without DCMTK the tests
skip and say so.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from node.serve import Node
from scp import upper_layer as ul
from tests.command_sets import c_echo_rq, c_store_rq
from tests.factory import ct_series
from tests.test_scp_network import encode, make_settings

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
CT_CONTEXT, ECHO_CONTEXT = 1, 3


def dcmtk_storescp() -> str | None:
    """DCMTK's storescp: the first on PATH (outside this virtualenv) or in /usr/bin that
    says it is DCMTK's."""
    venv_bin = str(Path(sys.prefix) / "bin")
    folders = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    for folder in [*folders, "/usr/bin"]:
        candidate = Path(folder) / "storescp"
        if not os.access(candidate, os.X_OK):
            continue
        version = subprocess.run(
            [str(candidate), "--version"], capture_output=True, text=True, timeout=10
        )
        if "dcmtk" in version.stdout.lower():
            return str(candidate)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"storescp exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"storescp did not listen on port {port} within {seconds:.0f} s")


@dataclass
class Peer:
    """An acceptor under test and where its received files show up."""

    name: str
    port: int
    received: Path

    def file_count(self) -> int:
        return sum(1 for p in self.received.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def dcmtk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    executable = dcmtk_storescp()
    if executable is None:
        pytest.skip("DCMTK's storescp is not installed (apt-get install dcmtk; `make tools`)")
    received = tmp_path_factory.mktemp("dcmtk")
    port = free_port()
    process = subprocess.Popen(
        [executable, "-od", str(received), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        yield Peer("DCMTK storescp", port, received)
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    node = Node(make_settings(tmp_path_factory.mktemp("node")))
    node.start()
    try:
        yield Peer("ctnode", node.scp.port, node.spool.store_dir)
    finally:
        node.stop()


# -- the requestor ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A User Identity Negotiation sub-item as a requestor sends it (PS3.7 D.3.3.7.1):
    type 1 a username, type 2 a username and passcode."""

    identity_type: int
    positive_response_requested: bool
    primary: bytes = b"storescu"
    secondary: bytes = b""

    def sub_item(self) -> bytes:
        value = bytes([self.identity_type, self.positive_response_requested])
        value += struct.pack(">H", len(self.primary)) + self.primary
        value += struct.pack(">H", len(self.secondary)) + self.secondary
        return struct.pack(">BBH", 0x58, 0, len(value)) + value


def with_sub_item(pdu: bytes, sub_item: bytes) -> bytes:
    """An A-ASSOCIATE-RQ PDU with ``sub_item`` appended to its user information item (the
    last item ``associate_rq`` writes), both lengths grown to match."""
    offset = 6 + 68
    while pdu[offset] != 0x50:
        offset += 4 + struct.unpack_from(">H", pdu, offset + 2)[0]
    user_length = struct.unpack_from(">H", pdu, offset + 2)[0]
    assert offset + 4 + user_length == len(pdu), "user information is not the last item"
    grown = bytearray(pdu + sub_item)
    struct.pack_into(">H", grown, offset + 2, user_length + len(sub_item))
    struct.pack_into(">I", grown, 2, len(grown) - 6)
    return bytes(grown)


def _uid(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("ascii")


def _transfer_syntax(context_item: bytes) -> str:
    """The transfer syntax sub-item (40H) of a presentation context item (21H)."""
    offset = 4
    while offset < len(context_item):
        kind, _, length = struct.unpack_from(">BBH", context_item, offset)
        if kind == 0x40:
            return _uid(context_item[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return ""


@dataclass(frozen=True)
class Answer:
    """An A-ASSOCIATE-AC read item by item (PS3.8 9.3.3, PS3.7 D.3.3)."""

    contexts: list[tuple[int, int, str]]  # (context ID, result, transfer syntax)
    max_pdu_length: int
    implementation_class_uid: str
    async_window: tuple[int, int] | None
    roles: list[tuple[str, int, int]]
    identity_responses: list[bytes]
    extended: list[bytes]

    @classmethod
    def parse(cls, body: bytes) -> Answer:
        items = ul.parse_associate_ac(body)
        contexts = [(data[0], data[2], _transfer_syntax(data)) for data in items.get(0x21, [])]
        roles = []
        for data in items.get(0x54, []):
            length = struct.unpack_from(">H", data)[0]
            roles.append((_uid(data[2 : 2 + length]), data[2 + length], data[3 + length]))
        windows = items.get(0x53, [])
        return cls(
            contexts=sorted(contexts),
            max_pdu_length=struct.unpack(">I", items[0x51][0])[0],
            implementation_class_uid=_uid(items[0x52][0]),
            async_window=struct.unpack(">HH", windows[0]) if windows else None,
            roles=roles,
            identity_responses=items.get(0x59, []),
            extended=items.get(0x56, []),
        )

    def requestor_roles(self, sop_class: str, proposed: tuple[int, int] | None) -> set[str]:
        """The roles the requestor may take for ``sop_class`` after negotiation (PS3.7
        D.3.3.4): SCU only by default (no sub-item proposed or none returned), else each
        role both proposed and returned."""
        returned = [(scu, scp) for uid, scu, scp in self.roles if uid == sop_class]
        if proposed is None or not returned:
            return {"SCU"}
        ((scu, scp),) = returned
        return {r for r, p, a in (("SCU", proposed[0], scu), ("SCP", proposed[1], scp)) if p and a}

    def effective_async_window(self) -> tuple[int, int]:
        """The window in force: as returned, or 1/1 (no sub-item, PS3.7 D.3.3.3)."""
        return self.async_window or (1, 1)


class RawAssociation:
    """A requestor that speaks PDUs over a plain socket: what a test needs to propose
    exactly the sub-items it wants and to read exactly what came back."""

    def __init__(self, port: int, request: bytes) -> None:
        self.conn = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.conn.sendall(request)
        kind, body = self.receive()
        assert kind == ul.ASSOCIATE_AC, f"expected A-ASSOCIATE-AC, got PDU type {kind:#04x}"
        self.answer = Answer.parse(body)
        self.message_id = 0

    def receive(self) -> tuple[int, bytes]:
        kind, length = ul.parse_header(self._exactly(6))
        return kind, self._exactly(length)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.conn.recv(size - len(data))
            assert chunk, "the peer closed the connection mid-PDU"
            data += chunk
        return data

    def send_fragments(self, context_id: int, control: int, data: bytes) -> None:
        """``data`` in PDVs no larger than the acceptor's maximum length (0: no limit)."""
        limit = self.answer.max_pdu_length
        size = limit - 6 if limit else len(data) or 1
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        for n, chunk in enumerate(chunks):
            last = 0x02 if n == len(chunks) - 1 else 0
            item = struct.pack(">IBB", len(chunk) + 2, context_id, control | last) + chunk
            self.conn.sendall(ul.pdu(ul.P_DATA_TF, item))

    def request(self, context_id: int, command: bytes, data_set: bytes = b"") -> int:
        """Send a DIMSE request (and its data set); the status of its response."""
        self.send_fragments(context_id, 0x01, command)
        if data_set:
            self.send_fragments(context_id, 0x00, data_set)
        fragments = b""
        while True:
            kind, body = self.receive()
            assert kind == ul.P_DATA_TF, f"expected P-DATA-TF, got PDU type {kind:#04x}"
            for answered_on, control, fragment in ul.pdv_items(body):
                assert answered_on == context_id and control & 0x01
                fragments += bytes(fragment)
                if control & 0x02:
                    status: int = struct.unpack("<H", ul.parse_command(fragments).extra[0x0900])[0]
                    return status

    def echo(self) -> int:
        self.message_id += 1
        return self.request(ECHO_CONTEXT, c_echo_rq(self.message_id))

    def store(self, sop_instance: str, data_set: bytes) -> int:
        self.message_id += 1
        return self.request(CT_CONTEXT, c_store_rq(self.message_id, CT, sop_instance), data_set)

    def release(self) -> int:
        """A-RELEASE-RQ; the type of the PDU that answers it."""
        self.conn.sendall(ul.pdu(ul.RELEASE_RQ, b"\0\0\0\0"))
        kind, _ = self.receive()
        self.conn.close()
        return kind


# -- the proposals ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    request: ul.AssociateRequest
    identity: Identity | None = None
    role: tuple[int, int] | None = field(default=None)

    def encode(self) -> bytes:
        encoded = ul.associate_rq(self.request)
        return (
            encoded if self.identity is None else with_sub_item(encoded, self.identity.sub_item())
        )


BASE = ul.AssociateRequest(
    1,
    "CTNODE",
    "NEGOTIATOR",
    ul.APPLICATION_CONTEXT,
    (
        ul.ProposedContext(CT_CONTEXT, CT, (EXPLICIT_LITTLE_ENDIAN,)),
        ul.ProposedContext(ECHO_CONTEXT, VERIFICATION, (EXPLICIT_LITTLE_ENDIAN,)),
    ),
    16384,
    implementation_version="NEGOTIATE_1",
)


def role(scu: int, scp: int) -> Proposal:
    return Proposal(replace(BASE, roles=(ul.RoleSelection(CT, scu, scp),)), role=(scu, scp))


def identity(identity_type: int, positive: bool) -> Proposal:
    secondary = b"passcode" if identity_type == 2 else b""
    return Proposal(BASE, Identity(identity_type, positive, secondary=secondary))


_instances = itertools.count()


def negotiate_and_use(peer: Peer, proposal: Proposal) -> Answer:
    """Associate with ``proposal``, then C-ECHO, C-STORE the CT where the requestor may be
    its SCU, and release: the answer, after checking the association worked."""
    before = peer.file_count()
    association = RawAssociation(peer.port, proposal.encode())
    answer = association.answer
    assert association.echo() == 0x0000, peer.name
    may_store = "SCU" in answer.requestor_roles(CT, proposal.role)
    if may_store:
        ds = ct_series(1, 16, 16, seed=f"negotiation-{next(_instances)}")[0]
        status = association.store(str(ds.SOPInstanceUID), encode(ds))
        assert status == 0x0000, f"{peer.name}: C-STORE status {status:#06x}"
    assert association.release() == ul.RELEASE_RP, peer.name
    assert peer.file_count() == before + may_store, peer.name
    return answer


def both(dcmtk: Peer, ours: Peer, proposal: Proposal) -> tuple[Answer, Answer]:
    theirs, mine = negotiate_and_use(dcmtk, proposal), negotiate_and_use(ours, proposal)
    assert (
        mine.contexts
        == theirs.contexts
        == [
            (CT_CONTEXT, ul.ACCEPTANCE, EXPLICIT_LITTLE_ENDIAN),
            (ECHO_CONTEXT, ul.ACCEPTANCE, EXPLICIT_LITTLE_ENDIAN),
        ]
    )
    assert mine.max_pdu_length > 0 and theirs.max_pdu_length > 0
    assert mine.implementation_class_uid == ul.IMPLEMENTATION_CLASS_UID
    return theirs, mine


# -- the tests ----------------------------------------------------------------------------------


def test_without_sub_items_both_answer_none(dcmtk: Peer, ours: Peer) -> None:
    """No sub-item proposed, none answered (PS3.7 D.3.3.3-D.3.3.7: each answer only to a
    proposal)."""
    theirs, mine = both(dcmtk, ours, Proposal(BASE))
    for answer in (theirs, mine):
        assert answer.roles == [] and answer.async_window is None
        assert answer.identity_responses == [] and answer.extended == []


@pytest.mark.parametrize(("scu", "scp"), [(1, 0), (1, 1)])
def test_role_selection_with_the_scu_role_proposed(
    dcmtk: Peer, ours: Peer, scu: int, scp: int
) -> None:
    """SCU proposed (with or without SCP) for CT Image Storage: the requestor is the SCU
    only, with either acceptor. DCMTK's storescp returns no role selection sub-item (the
    default roles apply, PS3.7 D.3.3.4); ours returns one, accepting the SCU role and
    turning down the SCP role (this node never sends a C-STORE back on an association it
    accepted), so a requestor that proposed both reads the outcome instead of inferring it
    from an absence."""
    theirs, mine = both(dcmtk, ours, role(scu, scp))
    assert all(values[1:] <= (scu, scp) for values in theirs.roles)  # none granted unasked
    assert mine.roles == [(CT, 1, 0)]
    assert mine.requestor_roles(CT, (scu, scp)) == theirs.requestor_roles(CT, (scu, scp))
    assert mine.requestor_roles(CT, (scu, scp)) == {"SCU"}


def test_role_selection_with_only_the_scp_role_proposed(dcmtk: Peer, ours: Peer) -> None:
    """SCP only proposed for CT Image Storage (SCU=0, SCP=1), as a C-GET requestor does
    for the classes it wants back. DCMTK's storescp returns no sub-item, so the default
    roles apply and the requestor is the SCU it declined to be; ours returns 0/0: the SCU
    role was not proposed (an acceptor never returns 1 for a role not proposed, D.3.3.4)
    and the SCP role is turned down (this node sends nothing back). The context stays
    accepted, with no role for the requestor: it sends no C-STORE on it. Both conform."""
    theirs, mine = both(dcmtk, ours, role(0, 1))
    assert all(values[1] == 0 for values in theirs.roles)  # SCU not granted unasked
    assert mine.roles == [(CT, 0, 0)]
    assert mine.requestor_roles(CT, (0, 1)) == set()


def test_asynchronous_operations_window(dcmtk: Peer, ours: Peer) -> None:
    """5 outstanding operations each way proposed: both acceptors hold the requestor to one
    at a time. DCMTK's storescp by leaving the sub-item out (the default 1/1, PS3.7
    D.3.3.3); ours by answering 1/1 explicitly, which a requestor cannot misread."""
    proposal = Proposal(replace(BASE, async_window=(5, 5)))
    theirs, mine = both(dcmtk, ours, proposal)
    assert mine.async_window == (1, 1)
    assert mine.effective_async_window() == theirs.effective_async_window() == (1, 1)


@pytest.mark.parametrize("identity_type", [1, 2], ids=["username", "username-passcode"])
def test_user_identity_without_a_response_requested(
    dcmtk: Peer, ours: Peer, identity_type: int
) -> None:
    """User identity proposed, no positive response requested: accepted and ignored by
    both, and neither answers (PS3.7 D.3.3.7.2: no response unless requested)."""
    theirs, mine = both(dcmtk, ours, identity(identity_type, False))
    assert mine.identity_responses == theirs.identity_responses == []


@pytest.mark.parametrize("identity_type", [1, 2], ids=["username", "username-passcode"])
def test_user_identity_with_a_response_requested(
    dcmtk: Peer, ours: Peer, identity_type: int
) -> None:
    """User identity proposed with a positive response requested. DCMTK's storescp does not
    take part in user identity negotiation and leaves the response out, which PS3.7
    D.3.3.7 allows (the association goes on without it). Ours accepts the identity without
    checking it (none is configured) and says so as asked: a response sub-item with an
    empty server response, what D.3.3.7.2 prescribes for types 1 and 2."""
    theirs, mine = both(dcmtk, ours, identity(identity_type, True))
    assert theirs.identity_responses in ([], [b"\0\0"])
    assert mine.identity_responses == [b"\0\0"]


def test_sop_class_extended_negotiation(dcmtk: Peer, ours: Peer) -> None:
    """Extended negotiation proposed for CT Image Storage: Storage SCPs define no
    application information for it that either acceptor uses, and neither answers (an
    acceptor that does not support it omits the sub-item, PS3.7 D.3.3.5)."""
    theirs, mine = both(dcmtk, ours, Proposal(replace(BASE, extended=(CT,))))
    assert mine.extended == theirs.extended == []


def test_requestor_maximum_pdu_length_zero(dcmtk: Peer, ours: Peer) -> None:
    """A requestor maximum length of 0 means no limit on what the acceptor sends (PS3.8
    D.1): both accept it, answer with their own limit, and the association carries an
    echo and a store as any other does."""
    theirs, mine = both(dcmtk, ours, Proposal(replace(BASE, max_pdu_length=0)))
    assert theirs.max_pdu_length == 16384  # storescp's default
    assert mine.max_pdu_length == make_settings(Path("unused")).scp.pdu_limit
