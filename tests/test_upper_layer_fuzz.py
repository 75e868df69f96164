"""Fuzzing the upper layer's parsers (PS3.8 9.3 PDUs, PS3.7 E.1 command sets) with Hypothesis.

The contract under test is the one ``scp.upper_layer.ProtocolError`` states: for any input a
parser returns a result or raises ``ProtocolError`` (``MessageError`` is one), which the SCP
turns into an A-ABORT; anything else escaping would end the association with the SCP's
catch-all abort and a traceback in the log. Inputs come three ways: arbitrary bytes; valid
PDUs and command sets built from generated values, which must also round-trip; and those
with bytes flipped, cut, inserted or removed and length fields rewritten, which reach the
branches behind the first length check. A bounded number of mutated PDUs also go over a
socket to a node running in-process.

The default run keeps each test to a few hundred examples (the ``ci`` profile registered in
``tests/conftest.py``); ``make fuzz`` runs this file with the ``fuzz`` profile
(``CTNODE_FUZZ=1``), many more examples, for local runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from node.serve import Node
from scp import upper_layer as ul
from tests.command_sets import c_echo_rq, c_store_rq, element
from tests.test_scp_network import make_settings

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

T = TypeVar("T")


def parses_or_protocol_error(parse: Callable[[], T]) -> T | None:
    """``parse()``'s result, or None where it raised ``ProtocolError``; anything else
    escapes and fails the test."""
    try:
        return parse()
    except ul.ProtocolError as exc:
        event(f"{type(exc).__name__}: {exc}")  # --hypothesis-show-statistics lists them
        return None


# -- strategies -----------------------------------------------------------------------------

uids = st.lists(st.integers(0, 10**12), min_size=2, max_size=6).map(
    lambda parts: ".".join(map(str, parts))
)
ae_titles = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"),
    min_size=1,
    max_size=16,
)
versions = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=16)
u16 = st.integers(0, 0xFFFF)


@st.composite
def contexts(draw: st.DrawFn) -> tuple[ul.ProposedContext, ...]:
    ids = draw(st.lists(st.integers(0, 127), min_size=0, max_size=5, unique=True))
    return tuple(
        ul.ProposedContext(
            2 * i + 1,
            draw(st.one_of(st.sampled_from([CT, VERIFICATION]), uids)),
            tuple(draw(st.lists(uids, min_size=1, max_size=4))),
        )
        for i in ids
    )


roles = st.builds(ul.RoleSelection, uids, st.integers(0, 1), st.integers(0, 1))
identities = st.builds(ul.UserIdentity, st.integers(1, 5), st.booleans())


@st.composite
def associate_requests(draw: st.DrawFn, called_ae: str | None = None) -> ul.AssociateRequest:
    """Any A-ASSOCIATE-RQ ``associate_rq`` can build, with the user information sub-items of
    PS3.7 D.3.3: maximum length, implementation class and version, asynchronous operations
    window, role selection, SOP class extended negotiation and user identity."""
    return ul.AssociateRequest(
        protocol_version=draw(st.one_of(st.just(1), u16)),
        called_ae=called_ae or draw(ae_titles),
        calling_ae=draw(ae_titles),
        application_context=draw(st.one_of(st.just(ul.APPLICATION_CONTEXT), uids)),
        contexts=draw(contexts()),
        max_pdu_length=draw(st.one_of(st.just(0), st.integers(0, 2**32 - 1))),
        implementation_class_uid=draw(uids),
        implementation_version=draw(versions),
        async_window=draw(st.none() | st.tuples(u16, u16)),
        roles=tuple(draw(st.lists(roles, max_size=3))),
        user_identity=draw(st.none() | identities),
        extended=tuple(draw(st.lists(uids, max_size=3))),
    )


def _sub_item_fields(kind: int, start: int, data: bytes) -> Iterator[int]:
    """Offsets (in ``data``) of the 2-byte length fields inside a user information
    sub-item's value that starts at ``start``: the UID length of role selection (D.3.3.4)
    and extended negotiation (D.3.3.5), the primary and secondary field lengths of user
    identity (D.3.3.7)."""
    if kind in (0x54, 0x56):
        yield start
    elif kind == 0x58:
        primary = start + 2
        yield primary
        yield primary + 2 + struct.unpack_from(">H", data, primary)[0]


def _item_length_fields(data: bytes, start: int, end: int) -> Iterator[int]:
    """Offsets of every 2-byte item length in a well-formed run of PS3.8 items, nested
    items included (presentation context sub-items, user information sub-items)."""
    offset = start
    while offset < end:
        kind, _, length = struct.unpack_from(">BBH", data, offset)
        yield offset + 2
        value = offset + 4
        if kind == 0x20:
            yield from _item_length_fields(data, value + 4, value + length)
        elif kind == 0x50:
            yield from _item_length_fields(data, value, value + length)
        else:
            yield from _sub_item_fields(kind, value, data)
        offset = value + length


def associate_rq_length_fields(body: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of each length field of an A-ASSOCIATE-RQ body."""
    return [(offset, ">H") for offset in _item_length_fields(body, 68, len(body))]


def pdv_length_fields(body: bytes) -> list[tuple[int, str]]:
    """The item lengths of a P-DATA-TF body (PS3.8 9.3.5.1), big endian."""
    fields, offset = [], 0
    while offset < len(body):
        fields.append((offset, ">I"))
        offset += 4 + struct.unpack_from(">I", body, offset)[0]
    return fields


def command_length_fields(data: bytes) -> list[tuple[int, str]]:
    """The element value lengths of a command set (implicit VR, little endian)."""
    fields, offset = [], 0
    while offset < len(data):
        fields.append((offset + 4, "<I"))
        offset += 8 + struct.unpack_from("<I", data, offset + 4)[0]
    return fields


@st.composite
def mutated(
    draw: st.DrawFn, original: bytes, length_fields: Sequence[tuple[int, str]] = ()
) -> bytes:
    """``original`` with a few mutations: length fields rewritten (to small values, one
    off, the largest value, anything), bytes flipped, a run inserted or removed, the end
    cut off. Length fields first, while their offsets still hold; at least one mutation."""
    data = bytearray(original)
    rewrites = draw(st.integers(0, 2)) if length_fields else 0
    for _ in range(rewrites):
        offset, fmt = draw(st.sampled_from(length_fields))
        top = 2 ** (8 * struct.calcsize(fmt)) - 1
        old = struct.unpack_from(fmt, data, offset)[0]
        new = draw(
            st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8, max(old - 1, 0), min(old + 1, top), top])
            | st.integers(0, top)
        )
        struct.pack_into(fmt, data, offset, new)
    for _ in range(draw(st.integers(0 if rewrites else 1, 3))):
        action = draw(st.sampled_from(["flip", "flip", "insert", "delete", "truncate"]))
        if not data and action != "insert":
            continue
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


def pdv(context_id: int, control: int, fragment: bytes) -> bytes:
    """One presentation data value item (PS3.8 9.3.5.1)."""
    return struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment


pdvs = st.lists(
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=64)),
    min_size=1,
    max_size=5,
)
c_store_requests = st.builds(c_store_rq, u16, uids, uids, st.integers(0, 2), u16)
commands = st.builds(
    ul.Command,
    command_field=st.sampled_from([ul.C_STORE_RQ, ul.C_ECHO_RQ]),
    message_id=u16,
    affected_sop_class=uids,
    affected_sop_instance=uids,
)
responses = st.builds(ul.response, commands, u16)
hand_made_command_sets = st.lists(
    st.tuples(u16, st.binary(max_size=24)).map(lambda e: element(*e)), max_size=8
).map(b"".join)


def pdv_list(body: bytes) -> list[tuple[int, int, bytes]]:
    return [(c, m, bytes(f)) for c, m, f in ul.pdv_items(body)]


PARSERS: dict[str, Callable[[bytes], object]] = {
    "parse_associate_rq": ul.parse_associate_rq,
    "parse_associate_ac": ul.parse_associate_ac,
    "pdv_items": pdv_list,
    "parse_command": ul.parse_command,
}


# -- (a) arbitrary bytes -------------------------------------------------------------------


@pytest.mark.parametrize("name", PARSERS)
@given(data=st.binary(max_size=600) | st.binary(min_size=68, max_size=600))
@example(data=b"\0\0\0\0\x02\0\0\0\x01")  # a command element's value cut short
@example(data=element(0x0100, b"\x01\0\0\0"))  # Command Field 4 bytes long, not a US
@example(data=b"\0\0\0\x01\x01")  # a PDV item too short for its header
def test_arbitrary_bytes_parse_or_raise_protocol_error(name: str, data: bytes) -> None:
    parses_or_protocol_error(lambda: PARSERS[name](data))


def _framed(value: bytes, tail: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value + tail


# Sub-item values: anything, or framed as role selection, extended negotiation and user
# identity frame theirs (a 2-byte length, the value, a few more bytes).
framed = st.builds(_framed, st.binary(max_size=20), st.binary(max_size=4))
item_values = st.one_of(
    st.binary(max_size=40),
    framed,
    st.builds(lambda head, a, b: head + a + b, st.binary(min_size=2, max_size=2), framed, framed),
)


@given(
    header=st.binary(min_size=68, max_size=68),
    items=st.lists(
        st.tuples(
            st.sampled_from([0x10, 0x20, 0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x58, 0x99]),
            item_values,
        ),
        max_size=6,
    ),
)
@example(header=bytes(68), items=[(0x54, b"\0\0")])  # role selection: no UID, no roles
@example(header=bytes(68), items=[(0x54, b"\0\x011\x01")])  # one role byte of two
@example(header=bytes(68), items=[(0x58, b"\x01\x01\0\x04us")])  # username cut short
@example(header=bytes(68), items=[(0x58, b"\x02\0\0\0")])  # no passcode length
@example(header=bytes(68), items=[(0x53, b"\0\x05")])  # half an async window
@example(header=bytes(68), items=[(0x20, b"\x01\0\0")])  # presentation context too short
def test_arbitrary_items_parse_or_raise_protocol_error(
    header: bytes, items: list[tuple[int, bytes]]
) -> None:
    """Random values in items of the right framing: the top-level items and, nested in a
    user information item, its sub-items reach each sub-item's own checks."""
    user = b"".join(struct.pack(">BBH", k, 0, len(v)) + v for k, v in items)
    body = header + b"".join(struct.pack(">BBH", k, 0, len(v)) + v for k, v in items)
    body += struct.pack(">BBH", 0x50, 0, len(user)) + user
    parses_or_protocol_error(lambda: ul.parse_associate_rq(body))


# -- (b) valid values round-trip; their mutants parse or raise ProtocolError ------------------


@given(request=associate_requests())
def test_associate_rq_round_trips(request: ul.AssociateRequest) -> None:
    encoded = ul.associate_rq(request)
    assert ul.parse_header(encoded[:6]) == (ul.ASSOCIATE_RQ, len(encoded) - 6)
    parsed = ul.parse_associate_rq(encoded[6:])
    assert parsed == dataclasses.replace(
        request,
        raw_called=request.called_ae.encode().ljust(16),
        raw_calling=request.calling_ae.encode().ljust(16),
    )


@given(data=st.data(), request=associate_requests())
def test_mutated_associate_rq_parses_or_raises_protocol_error(
    data: st.DataObject, request: ul.AssociateRequest
) -> None:
    body = ul.associate_rq(request)[6:]
    mutant = data.draw(mutated(body, associate_rq_length_fields(body)))
    parses_or_protocol_error(lambda: ul.parse_associate_rq(mutant))


@given(items=pdvs)
def test_p_data_round_trips(items: list[tuple[int, int, bytes]]) -> None:
    assert pdv_list(b"".join(pdv(*item) for item in items)) == items


@given(data=st.data(), items=pdvs)
def test_mutated_p_data_parses_or_raises_protocol_error(
    data: st.DataObject, items: list[tuple[int, int, bytes]]
) -> None:
    body = b"".join(pdv(*item) for item in items)
    mutant = data.draw(mutated(body, pdv_length_fields(body)))
    parsed = parses_or_protocol_error(lambda: pdv_list(mutant))
    if parsed is not None:
        assert sum(6 + len(fragment) for _, _, fragment in parsed) == len(mutant)


@given(
    message_id=u16,
    sop_class=uids,
    sop_instance=uids,
    priority=st.integers(0, 2),
    data_set_type=u16,
)
def test_c_store_rq_round_trips(
    message_id: int, sop_class: str, sop_instance: str, priority: int, data_set_type: int
) -> None:
    command = ul.parse_command(
        c_store_rq(message_id, sop_class, sop_instance, priority, data_set_type)
    )
    assert command == ul.Command(
        ul.C_STORE_RQ,
        message_id,
        sop_class,
        sop_instance,
        data_set_type,
        {0x0700: struct.pack("<H", priority)},
    )


@given(request=commands, status=u16)
def test_response_round_trips(request: ul.Command, status: int) -> None:
    parsed = ul.parse_command(ul.response(request, status))
    store = request.command_field == ul.C_STORE_RQ
    assert parsed.command_field == (ul.C_STORE_RSP if store else ul.C_ECHO_RSP)
    assert parsed.affected_sop_class == request.affected_sop_class
    assert parsed.affected_sop_instance == (request.affected_sop_instance if store else "")
    assert parsed.data_set_type == ul.NO_DATA_SET
    assert parsed.extra[0x0120] == struct.pack("<H", request.message_id)
    assert parsed.extra[0x0900] == struct.pack("<H", status)


@given(data=st.data(), command_set=c_store_requests | responses | hand_made_command_sets)
def test_mutated_command_set_parses_or_raises_protocol_error(
    data: st.DataObject, command_set: bytes
) -> None:
    mutant = data.draw(mutated(command_set, command_length_fields(command_set)))
    parses_or_protocol_error(lambda: ul.parse_command(mutant))


# -- mutated PDUs through a node over a socket ---------------------------------------------


def read_pdus(conn: socket.socket) -> list[int]:
    """The types of the PDUs the node sends until it closes the connection; each must be
    whole (unless the node reset the connection: an abort while our bytes were still
    arriving)."""
    data, reset = b"", False
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except ConnectionResetError:
        reset = True
    kinds = []
    while data:
        assert len(data) >= 6, "a PDU header cut short"
        if reset and len(data) < 6:
            break
        kind, length = ul.parse_header(data[:6])
        assert reset or len(data) >= 6 + length, "a PDU body cut short"
        kinds.append(kind)
        data = data[6 + length :]
    return kinds


def send_and_close(conn: socket.socket, messages: Sequence[bytes]) -> None:
    """Send ``messages`` and close our side: no mutant leaves the node waiting for bytes
    that never come. The node may have aborted and closed before all arrived."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        for message in messages:
            conn.sendall(message)
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)


def exchange(port: int, *messages: bytes) -> list[int]:
    """Send ``messages`` and read what the node answers until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        send_and_close(conn, messages)
        return read_pdus(conn)


def exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        assert chunk, "the node closed the connection mid-PDU"
        data += chunk
    return data


def accept_and_answer(port: int, request: bytes, *messages: bytes) -> list[int]:
    """Associate with ``request`` (accepted), then send ``messages`` and close our side."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        kind, length = ul.parse_header(exactly(conn, 6))
        assert kind == ul.ASSOCIATE_AC
        exactly(conn, length)
        send_and_close(conn, messages)
        return read_pdus(conn)


def pdu_length_fields(body_fields: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(2, ">I"), *((offset + 6, fmt) for offset, fmt in body_fields)]


# A data set the node stores nothing of (it answers 0xC000): Specific Character Set only.
DATA_SET = b"\x08\x00\x05\x00CS\x00\x00"

VALID_RQ = ul.AssociateRequest(
    1,
    "CTNODE",
    "FUZZER",
    ul.APPLICATION_CONTEXT,
    (
        ul.ProposedContext(1, CT, (EXPLICIT_LITTLE_ENDIAN,)),
        ul.ProposedContext(3, VERIFICATION, (EXPLICIT_LITTLE_ENDIAN,)),
    ),
    16384,
)


@pytest.fixture
def fuzzed_node(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Node]:
    """A node whose per-address limits leave room for one connection per example, and
    whose log is captured: a parser error that is not a ``ProtocolError`` shows there as
    the SCP's catch-all abort, at ERROR."""
    caplog.set_level(logging.WARNING, logger="scp")
    node = Node(
        make_settings(tmp_path, max_unassociated_per_address=8, max_associations_per_address=8)
    )
    node.start()
    yield node
    node.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert list(node.spool.tmp_dir.iterdir()) == []


SOCKET_EXAMPLES = max(20, settings().max_examples // 4)


def test_mutated_associate_rq_to_a_node(fuzzed_node: Node) -> None:
    port = fuzzed_node.scp.port

    @settings(max_examples=SOCKET_EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data(), request=associate_requests(called_ae="CTNODE"))
    def check(data: st.DataObject, request: ul.AssociateRequest) -> None:
        encoded = ul.associate_rq(request)
        fields = pdu_length_fields(associate_rq_length_fields(encoded[6:]))
        answer = exchange(port, data.draw(mutated(encoded, fields)))
        assert set(answer) <= {ul.ASSOCIATE_AC, ul.ASSOCIATE_RJ, ul.ABORT}
        assert len(answer) <= 1

    check()
    assert accept_and_answer(port, ul.associate_rq(VALID_RQ), release_rq()) == [ul.RELEASE_RP]


def release_rq() -> bytes:
    return ul.pdu(ul.RELEASE_RQ, b"\0\0\0\0")


# a mutated data set that reaches pydicom (the node answers 0xC000) may make it warn
@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")
def test_mutated_p_data_to_a_node(fuzzed_node: Node) -> None:
    port = fuzzed_node.scp.port
    request = ul.associate_rq(VALID_RQ)
    messages = [(3, c_echo_rq(1), b""), (1, c_store_rq(2, CT, "1.2.3.4", 0, 0), DATA_SET)]

    def p_data(context_id: int, command: bytes, data_set: bytes) -> bytes:
        body = pdv(context_id, 0x03, command)
        if data_set:
            body += pdv(context_id, 0x02, data_set)
        return ul.pdu(ul.P_DATA_TF, body)

    for message in messages:  # unmutated: answered
        answer = accept_and_answer(port, request, p_data(*message), release_rq())
        assert answer == [ul.P_DATA_TF, ul.RELEASE_RP]

    @settings(max_examples=SOCKET_EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
    @given(
        data=st.data(),
        message=st.sampled_from(messages),
    )
    def check(data: st.DataObject, message: tuple[int, bytes, bytes]) -> None:
        encoded = p_data(*message)
        command_fields = [(offset + 12, fmt) for offset, fmt in command_length_fields(message[1])]
        fields = pdu_length_fields(pdv_length_fields(encoded[6:])) + command_fields
        mutant = data.draw(mutated(encoded, fields))
        answer = accept_and_answer(port, request, mutant, release_rq())
        assert set(answer) <= {ul.P_DATA_TF, ul.RELEASE_RP, ul.ABORT}

    check()
    assert accept_and_answer(port, request, release_rq()) == [ul.RELEASE_RP]
