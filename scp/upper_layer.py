"""The DICOM upper layer (PS3.8) for an acceptor that only stores: PDUs, association
negotiation, and the DIMSE command sets of C-ECHO and C-STORE (PS3.7).

Why not pynetdicom here: profiling ``ctnode serve`` showed half of its ~12 ms per 0.5 MB
instance in pynetdicom's per-message machinery (command sets built and parsed through
pydicom datasets, file meta through pydicom, events, queues between three threads that poll
every millisecond). An acceptor that stores needs little of the standard: the SCP reads PDUs
into one reusable buffer (``scp.pdu_reader``), writes data set fragments straight into the
spool file, and this module parses and builds the few command elements it needs with
``struct``.
pynetdicom remains the node's SCU (results to PACS, ``ctnode echo``) and the tests' peer.

Everything here is pure encoding and decoding; ``scp.server`` owns sockets and threads.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS_UID = "2.25.305828498616785536347217004357716409091"
IMPLEMENTATION_VERSION = "CTNODE_010"
IMPLICIT_LITTLE_ENDIAN = "1.2.840.10008.1.2"

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
NO_DATA_SET = 0x0101

# Presentation context results (PS3.8 9.3.3.2)
ACCEPTANCE, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4


# A-ABORT sources and reasons (PS3.8 9.3.8): the service user (the DIMSE layer above us)
# aborts for a broken message or a limit; the service provider for a broken PDU.
SERVICE_USER, SERVICE_PROVIDER = 0, 2
NOT_SPECIFIED, UNRECOGNIZED_PDU, UNEXPECTED_PDU = 0, 1, 2
UNRECOGNIZED_PARAMETER, UNEXPECTED_PARAMETER, INVALID_PARAMETER = 4, 5, 6


class ProtocolError(Exception):
    """The peer broke PS3.7 or PS3.8, or a limit: the association is aborted with the
    A-ABORT ``source`` and ``reason`` (PS3.8 9.3.8) this error carries. The parsers here
    raise nothing else for any input."""

    def __init__(
        self, message: str, source: int = SERVICE_PROVIDER, reason: int = INVALID_PARAMETER
    ) -> None:
        super().__init__(message)
        self.source = source
        self.reason = reason if source == SERVICE_PROVIDER else NOT_SPECIFIED


class MessageError(ProtocolError):
    """A DIMSE message the service user above the upper layer cannot accept (PS3.7): a
    broken or oversized command set, a fragment on the wrong context, a second command
    in the middle of a data set. Aborted by the service user (source 0)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, SERVICE_USER)


@dataclass(frozen=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class RoleSelection:
    """SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4): the roles the requestor proposes
    for itself (or, in an A-ASSOCIATE-AC, the roles the acceptor grants it)."""

    sop_class: str
    scu_role: int
    scp_role: int


@dataclass(frozen=True)
class UserIdentity:
    """User Identity Negotiation sub-item, RQ form (PS3.7 D.3.3.7). Only its type and
    whether a response is wanted are kept: the node does not authenticate by it, and the
    credentials must not linger in memory or reach a log."""

    identity_type: int
    positive_response_requested: bool


@dataclass(frozen=True)
class AssociateRequest:
    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: tuple[ProposedContext, ...]
    max_pdu_length: int
    implementation_class_uid: str = ""
    raw_called: bytes = b""
    raw_calling: bytes = b""
    implementation_version: str = ""
    async_window: tuple[int, int] | None = None
    roles: tuple[RoleSelection, ...] = ()
    user_identity: UserIdentity | None = None
    extended: tuple[str, ...] = ()  # SOP classes with SOP Class Extended Negotiation


@dataclass(frozen=True)
class ContextResult:
    context_id: int
    result: int
    abstract_syntax: str
    transfer_syntax: str


@dataclass
class Command:
    """The command elements a storage SCP uses (PS3.7 E.1, implicit VR little endian)."""

    command_field: int = 0
    message_id: int = 0
    affected_sop_class: str = ""
    affected_sop_instance: str = ""
    data_set_type: int = NO_DATA_SET
    extra: dict[int, bytes] = field(default_factory=dict)


# -- PDU framing ---------------------------------------------------------------------------


def pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def parse_header(header: bytes) -> tuple[int, int]:
    kind, _, length = struct.unpack(">BBI", header)
    return kind, length


# -- association -----------------------------------------------------------------------------


def _uid(raw: bytes) -> str:
    return raw.rstrip(b"\0 ").decode("ascii", "replace").strip()


def _items(data: bytes | memoryview, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    end = len(data)
    while offset < end:
        if offset + 4 > end:
            raise ProtocolError("truncated item header")
        kind, _, length = struct.unpack_from(">BBH", data, offset)
        if offset + 4 + length > end:
            raise ProtocolError("item runs past the end of its PDU")
        yield kind, bytes(data[offset + 4 : offset + 4 + length])
        offset += 4 + length


def _sized(value: bytes, what: str) -> tuple[bytes, bytes]:
    """A 2-byte length-prefixed field of a sub-item, and what follows it."""
    if len(value) < 2:
        raise ProtocolError(f"{what} too short")
    length = struct.unpack_from(">H", value)[0]
    if 2 + length > len(value):
        raise ProtocolError(f"{what} runs past its item")
    return value[2 : 2 + length], value[2 + length :]


def _presentation_context(data: bytes) -> ProposedContext:
    if len(data) < 4:
        raise ProtocolError("presentation context item too short")
    abstract, syntaxes = "", []
    for sub, value in _items(data, 4):
        if sub == 0x30:
            abstract = _uid(value)
        elif sub == 0x40:
            syntaxes.append(_uid(value))
    return ProposedContext(data[0], abstract, tuple(syntaxes))


def parse_associate_rq(body: bytes) -> AssociateRequest:
    """Decode an A-ASSOCIATE-RQ body (PS3.8 9.3.2) with the user information sub-items of
    PS3.7 Annex D.3.3; items of unknown types are skipped (PS3.8 9.3.1)."""
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE-RQ too short")
    version = struct.unpack_from(">H", body, 0)[0]
    raw_called, raw_calling = body[4:20], body[20:36]
    context, contexts, user = "", [], b""
    for kind, data in _items(body, 68):
        if kind == 0x10:
            context = _uid(data)
        elif kind == 0x20:
            contexts.append(_presentation_context(data))
        elif kind == 0x50:
            user = data
    fields: dict[str, object] = {}
    roles, extended = [], []
    max_length = 0
    for sub, value in _items(user):
        if sub == 0x51:
            if len(value) != 4:
                raise ProtocolError("maximum length sub-item is not 4 bytes")
            max_length = struct.unpack(">I", value)[0]
        elif sub == 0x52:
            fields["implementation_class_uid"] = _uid(value)
        elif sub == 0x55:
            fields["implementation_version"] = _uid(value)
        elif sub == 0x53:
            if len(value) != 4:
                raise ProtocolError("asynchronous operations window sub-item is not 4 bytes")
            fields["async_window"] = struct.unpack(">HH", value)
        elif sub == 0x54:
            uid, rest = _sized(value, "role selection sub-item")
            if len(rest) != 2:
                raise ProtocolError("role selection sub-item has no roles")
            roles.append(RoleSelection(_uid(uid), rest[0], rest[1]))
        elif sub == 0x56:
            uid, _ = _sized(value, "SOP class extended negotiation sub-item")
            extended.append(_uid(uid))
        elif sub == 0x58:
            if len(value) < 4:
                raise ProtocolError("user identity sub-item too short")
            _, rest = _sized(value[2:], "user identity primary field")
            _sized(rest, "user identity secondary field")
            fields["user_identity"] = UserIdentity(value[0], bool(value[1]))
    return AssociateRequest(
        version,
        raw_called.decode("ascii", "replace").strip(),
        raw_calling.decode("ascii", "replace").strip(),
        context,
        tuple(contexts),
        max_length,
        raw_called=raw_called,
        raw_calling=raw_calling,
        roles=tuple(roles),
        extended=tuple(extended),
        **fields,  # type: ignore[arg-type]
    )


def negotiate(
    proposed: Sequence[ProposedContext], supported: Mapping[str, Sequence[str]]
) -> list[ContextResult]:
    """Presentation context negotiation (PS3.8 9.3.2.2): an abstract syntax we support with
    the first transfer syntax the requestor proposes that we accept (the requestor lists its
    file's own syntax first, and storing that keeps the bytes as they were at the source)."""
    results = []
    for context in proposed:
        allowed = supported.get(context.abstract_syntax)
        if allowed is None:
            results.append(
                ContextResult(
                    context.context_id,
                    ABSTRACT_SYNTAX_NOT_SUPPORTED,
                    context.abstract_syntax,
                    IMPLICIT_LITTLE_ENDIAN,
                )
            )
            continue
        chosen = next((ts for ts in context.transfer_syntaxes if ts in allowed), None)
        if chosen is None:
            results.append(
                ContextResult(
                    context.context_id,
                    TRANSFER_SYNTAXES_NOT_SUPPORTED,
                    context.abstract_syntax,
                    IMPLICIT_LITTLE_ENDIAN,
                )
            )
        else:
            results.append(
                ContextResult(context.context_id, ACCEPTANCE, context.abstract_syntax, chosen)
            )
    return results


def _item(kind: int, data: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(data)) + data


def _text(value: str) -> bytes:
    return value.encode("ascii")


def granted_roles(
    request: AssociateRequest, results: Sequence[ContextResult]
) -> list[RoleSelection]:
    """The role selection replies (PS3.7 D.3.3.4): for each SOP class with an accepted
    context, the requestor may act as the SCU it proposed to be, never as an SCP (this
    node sends nothing back on an association it accepted)."""
    accepted = {r.abstract_syntax for r in results if r.result == ACCEPTANCE}
    return [
        RoleSelection(role.sop_class, 1 if role.scu_role else 0, 0)
        for role in request.roles
        if role.sop_class in accepted
    ]


def associate_ac(
    request: AssociateRequest, results: Sequence[ContextResult], max_pdu_length: int
) -> bytes:
    body = (
        struct.pack(">HH", 1, 0)
        + request.raw_called.ljust(16)
        + request.raw_calling.ljust(16)
        + b"\0" * 32
    )
    body += _item(0x10, _text(APPLICATION_CONTEXT))
    for result in results:
        body += _item(
            0x21,
            struct.pack(">BBBB", result.context_id, 0, result.result, 0)
            + _item(0x40, _text(result.transfer_syntax)),
        )
    user = _item(0x51, struct.pack(">I", max_pdu_length))
    user += _item(0x52, _text(IMPLEMENTATION_CLASS_UID))
    if request.async_window is not None:
        user += _item(0x53, struct.pack(">HH", 1, 1))  # one operation at a time
    for role in granted_roles(request, results):
        uid = _text(role.sop_class)
        user += _item(0x54, struct.pack(">H", len(uid)) + uid + bytes([role.scu_role, 0]))
    user += _item(0x55, _text(IMPLEMENTATION_VERSION))
    identity = request.user_identity
    if (
        identity is not None
        and identity.positive_response_requested
        and identity.identity_type in (1, 2)
    ):
        # accepted; a username (and passcode) has no server response (PS3.7 D.3.3.7.2).
        # Kerberos, SAML and JWT responses carry data the node does not make: none sent.
        user += _item(0x59, b"\0\0")
    body += _item(0x50, user)
    return pdu(ASSOCIATE_AC, body)


def associate_rq(request: AssociateRequest) -> bytes:
    """Encode ``request`` as an A-ASSOCIATE-RQ PDU: the requestor's side, for tests that
    speak to an SCP byte by byte and for round trips through ``parse_associate_rq``."""
    body = struct.pack(">HH", request.protocol_version, 0)
    body += request.called_ae.encode("ascii").ljust(16) + request.calling_ae.encode().ljust(16)
    body += b"\0" * 32 + _item(0x10, _text(request.application_context))
    for context in request.contexts:
        sub = _item(0x30, _text(context.abstract_syntax))
        sub += b"".join(_item(0x40, _text(ts)) for ts in context.transfer_syntaxes)
        body += _item(0x20, bytes([context.context_id, 0, 0, 0]) + sub)
    user = _item(0x51, struct.pack(">I", request.max_pdu_length))
    user += _item(0x52, _text(request.implementation_class_uid or IMPLEMENTATION_CLASS_UID))
    if request.async_window is not None:
        user += _item(0x53, struct.pack(">HH", *request.async_window))
    for role in request.roles:
        uid = _text(role.sop_class)
        user += _item(
            0x54, struct.pack(">H", len(uid)) + uid + bytes([role.scu_role, role.scp_role])
        )
    if request.implementation_version:
        user += _item(0x55, _text(request.implementation_version))
    for sop_class in request.extended:
        uid = _text(sop_class)
        user += _item(0x56, struct.pack(">H", len(uid)) + uid + b"\1")
    if request.user_identity is not None:
        identity = request.user_identity
        user += _item(
            0x58,
            bytes([identity.identity_type, identity.positive_response_requested])
            + struct.pack(">H", 4)
            + b"user"
            + struct.pack(">H", 0),
        )
    return pdu(ASSOCIATE_RQ, body + _item(0x50, user))


def parse_associate_ac(body: bytes) -> dict[int, list[bytes]]:
    """The items and user information sub-items of an A-ASSOCIATE-AC body, by item type:
    what a test compares between two acceptors."""
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE-AC too short")
    found: dict[int, list[bytes]] = {}
    for kind, data in _items(body, 68):
        if kind == 0x50:
            for sub, value in _items(data):
                found.setdefault(sub, []).append(value)
        else:
            found.setdefault(kind, []).append(data)
    return found


def associate_rj(result: int, source: int, reason: int) -> bytes:
    return pdu(ASSOCIATE_RJ, struct.pack(">BBBB", 0, result, source, reason))


def release_rp() -> bytes:
    return pdu(RELEASE_RP, b"\0\0\0\0")


def abort(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT; source 2 = service provider (reason given), 0 = service user."""
    return pdu(ABORT, struct.pack(">BBBB", 0, 0, source, reason))


# -- DIMSE command sets -------------------------------------------------------------------


def pdv_items(body: bytes | memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """The presentation data values of a P-DATA-TF body (PS3.8 9.3.5): context ID,
    message control header (bit 0: command, bit 1: last fragment) and fragment, each a
    view into ``body``."""
    view = memoryview(body)
    offset, end = 0, len(view)
    if end == 0:
        raise ProtocolError("P-DATA-TF without a presentation data value")
    while offset < end:
        if offset + 6 > end:
            raise ProtocolError("truncated PDV item")
        length = struct.unpack_from(">I", view, offset)[0]
        if length < 2 or offset + 4 + length > end:
            raise ProtocolError("malformed PDV item")
        yield view[offset + 4], view[offset + 5], view[offset + 6 : offset + 4 + length]
        offset += 4 + length


_US = {0x0100: "command_field", 0x0110: "message_id", 0x0800: "data_set_type"}


def parse_command(data: bytes) -> Command:
    """Decode a command set (group 0000, implicit VR little endian, PS3.7 E.1)."""
    command = Command()
    offset, end = 0, len(data)
    while offset < end:
        if offset + 8 > end:
            raise MessageError("truncated command element")
        group, element, length = struct.unpack_from("<HHI", data, offset)
        value = data[offset + 8 : offset + 8 + length]
        offset += 8 + length
        if group != 0x0000:
            raise MessageError("command set holds an element outside group 0000")
        if offset > end:
            raise MessageError("command element runs past the command set")
        if element in _US:
            if length != 2:
                raise MessageError(f"command element (0000,{element:04X}) is not a US")
            setattr(command, _US[element], struct.unpack("<H", value)[0])
        elif element == 0x0002:
            command.affected_sop_class = _uid(value)
        elif element == 0x1000:
            command.affected_sop_instance = _uid(value)
        elif element != 0x0000:
            command.extra[element] = value
    return command


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def response(request: Command, status: int) -> bytes:
    """The C-ECHO-RSP or C-STORE-RSP command set for ``request`` with ``status``."""
    field_ = C_STORE_RSP if request.command_field == C_STORE_RQ else C_ECHO_RSP
    body = _element(0x0002, _text(request.affected_sop_class))
    body += _element(0x0100, struct.pack("<H", field_))
    body += _element(0x0120, struct.pack("<H", request.message_id))
    body += _element(0x0800, struct.pack("<H", NO_DATA_SET))
    body += _element(0x0900, struct.pack("<H", status))
    if request.command_field == C_STORE_RQ:
        body += _element(0x1000, _text(request.affected_sop_instance))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def p_data(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF with the whole command set as its last command fragment."""
    item = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command
    return pdu(P_DATA_TF, item)


# -- file meta ----------------------------------------------------------------------------


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    if vr == b"OB":
        return (
            struct.pack("<HH", 0x0002, element)
            + vr
            + b"\0\0"
            + struct.pack("<I", len(value))
            + value
        )
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, DICM prefix and File Meta Information (PS3.10 7.1) written by the node."""
    body = _meta_element(0x0001, b"OB", b"\0\1")
    body += _meta_element(0x0002, b"UI", _text(sop_class))
    body += _meta_element(0x0003, b"UI", _text(sop_instance))
    body += _meta_element(0x0010, b"UI", _text(transfer_syntax))
    body += _meta_element(0x0012, b"UI", _text(IMPLEMENTATION_CLASS_UID))
    body += _meta_element(0x0013, b"SH", _text(IMPLEMENTATION_VERSION))
    if source_ae:
        body += _meta_element(0x0016, b"AE", source_ae.encode("ascii", "replace")[:16])
    group = _meta_element(0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\0" * 128 + b"DICM" + group + body
