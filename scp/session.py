"""One established association: P-DATA in, C-ECHO and C-STORE responses out (PS3.7 9.1,
PS3.8 9.3.5).

A DIMSE message is a command set, in command fragments, then (for C-STORE) its data set, in
data set fragments, all on one presentation context. The session checks that order as the
fragments arrive and bounds what a peer can make it hold: the command set is at most
``max_command_bytes`` in memory, a data set streams into one temp file and at most
``max_instance_mb`` of it is written (past that it is read and dropped, and the peer gets
0xA700), each PDU must arrive whole within its deadline. A peer that breaks the order gets
an A-ABORT, and whatever it had half sent is removed.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol

from config import SCPSettings
from scp import header
from scp import upper_layer as ul
from scp.pdu_reader import PDUReader
from scp.sop_classes import VERIFICATION
from scp.spool import Spool
from scp.validation import CANNOT_UNDERSTAND, SUCCESS, Rejection, check_size

log = logging.getLogger(__name__)

SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.5.1 (Refused: SOP Class not supported)
PROCESSING_FAILURE = 0x0110  # PS3.7 C.4: the node failed, not the instance


class Receiver(Protocol):
    """What a session needs of the SCP that accepted it (``scp.server.StorageSCP``)."""

    settings: SCPSettings
    spool: Spool

    @property
    def max_instance_bytes(self) -> int: ...

    def store(
        self,
        temp: Path,
        sop_class: str,
        sop_instance: str,
        calling: str,
        transfer_syntax: str,
        cid: str,
        sha256: str | None = None,
        head: bytes = b"",
    ) -> int: ...

    def refuse(
        self, rejection: Rejection, sop_class: str, sop_instance: str, calling: str, cid: str
    ) -> int: ...


class Session:
    """The messages of one association, in order, within the SCP's limits."""

    def __init__(
        self,
        scp: Receiver,
        reader: PDUReader,
        request: ul.AssociateRequest,
        results: list[ul.ContextResult],
        cid: str,
    ) -> None:
        self.scp = scp
        self.reader = reader
        self.request = request
        self.accepted = {r.context_id: r for r in results if r.result == ul.ACCEPTANCE}
        self.cid = cid
        settings = scp.settings
        self.max_pdu = settings.pdu_limit + 6
        self.max_command = settings.max_command_bytes
        self.max_data_set = scp.max_instance_bytes
        self.command_bytes = bytearray()
        self.command_context = 0
        # the C-STORE whose data set is arriving, its context, and where it goes
        self.command: ul.Command | None = None
        self.context: ul.ContextResult | None = None
        self.refusal: Rejection | None = None  # set: the data set is read and dropped
        self.file: BinaryIO | None = None
        self.temp: Path | None = None
        self.written = 0
        self.digest = hashlib.sha256()
        self.head = bytearray()  # the file's first bytes, for scp.header

    def run(self) -> None:
        try:
            while True:
                kind, body = self.reader.next(self.max_pdu, self._timeout())
                if kind == ul.P_DATA_TF:
                    self._p_data(body)
                elif kind == ul.RELEASE_RQ:
                    if self.command is not None or self.command_bytes:
                        raise ul.ProtocolError(
                            "A-RELEASE-RQ in the middle of a message", reason=ul.UNEXPECTED_PDU
                        )
                    self.reader.sendall(ul.release_rp())
                    log.info("association released", extra={"cid": self.cid})
                    return
                elif kind == ul.ABORT:
                    log.warning("association aborted by the peer", extra={"cid": self.cid})
                    return
                elif kind in (ul.ASSOCIATE_RQ, ul.ASSOCIATE_AC, ul.ASSOCIATE_RJ, ul.RELEASE_RP):
                    raise ul.ProtocolError(
                        f"unexpected PDU type {kind:#04x}", reason=ul.UNEXPECTED_PDU
                    )
                else:
                    raise ul.ProtocolError(
                        f"unrecognized PDU type {kind:#04x}", reason=ul.UNRECOGNIZED_PDU
                    )
        finally:
            self._discard_partial()

    def _timeout(self) -> float:
        """``dimse_timeout`` while a message is half received (its next fragment is due),
        ``network_timeout`` while the association is idle between messages."""
        settings = self.scp.settings
        in_message = self.command is not None or bool(self.command_bytes)
        return settings.dimse_timeout if in_message else settings.network_timeout

    def _p_data(self, body: memoryview) -> None:
        for context_id, control, fragment in ul.pdv_items(body):
            if control & 0x01:
                self._command_fragment(context_id, control, fragment)
            else:
                self._data_fragment(context_id, control, fragment)

    def _command_fragment(self, context_id: int, control: int, fragment: memoryview) -> None:
        if self.command is not None:
            raise ul.MessageError("a command fragment in the middle of a data set")
        if self.command_bytes and context_id != self.command_context:
            raise ul.MessageError("command fragments on two presentation contexts")
        if len(self.command_bytes) + len(fragment) > self.max_command:
            raise ul.MessageError(f"command set over {self.max_command} bytes")
        self.command_bytes += fragment
        self.command_context = context_id
        if control & 0x02:
            command = ul.parse_command(bytes(self.command_bytes))
            self.command_bytes.clear()
            self._command(context_id, command)

    def _data_fragment(self, context_id: int, control: int, fragment: memoryview) -> None:
        if self.command is None or self.context is None:
            raise ul.MessageError("a data set fragment without a C-STORE command")
        if context_id != self.context.context_id:
            raise ul.MessageError(
                f"a data set fragment on presentation context {context_id}, "
                f"its command on {self.context.context_id}"
            )
        if self.file is not None:
            too_large = check_size(self.written + len(fragment), self.max_data_set)
            if too_large is not None:
                self._drop_data_set(too_large)
            else:
                self._write(fragment)
        if control & 0x02:
            self._data_set_complete()

    def _write(self, fragment: memoryview) -> None:
        assert self.file is not None
        written = self.file.write(fragment) or 0
        self.scp.spool.start_writeback(self.file.fileno(), self.written, written)
        self.written += written
        self.digest.update(fragment)
        if len(self.head) < header.FIRST_BYTES:
            self.head += fragment[: header.FIRST_BYTES - len(self.head)]

    def _command(self, context_id: int, command: ul.Command) -> None:
        context = self.accepted.get(context_id)
        if context is None:
            raise ul.MessageError(f"a command on presentation context {context_id}, not accepted")
        if command.command_field == ul.C_ECHO_RQ:
            self.reader.sendall(ul.p_data(context_id, ul.response(command, SUCCESS)))
            return
        if command.command_field != ul.C_STORE_RQ:
            raise ul.MessageError(f"unsupported DIMSE command {command.command_field:#06x}")
        if command.data_set_type == ul.NO_DATA_SET:
            self.reader.sendall(ul.p_data(context_id, ul.response(command, CANNOT_UNDERSTAND)))
            return
        self.command, self.context = command, context
        if context.abstract_syntax == VERIFICATION or (
            command.affected_sop_class != context.abstract_syntax
        ):
            self.refusal = Rejection(
                SOP_CLASS_NOT_SUPPORTED,
                "wrong_context",
                "C-STORE on a presentation context of another SOP class",
            )
            return
        fd, name = tempfile.mkstemp(dir=self.scp.spool.tmp_dir, suffix=".dcm")
        self.temp = Path(name)
        self.file = open(fd, "wb", buffering=0)  # noqa: SIM115 (closed when complete)
        self.digest = hashlib.sha256()
        meta = ul.file_meta(
            command.affected_sop_class,
            command.affected_sop_instance,
            context.transfer_syntax,
            self.request.calling_ae,
        )
        self.written = self.file.write(meta) or 0
        self.head = bytearray(meta)

    def _drop_data_set(self, rejection: Rejection) -> None:
        """Stop storing the data set arriving: its file goes, the rest is read and dropped,
        and the peer gets ``rejection``'s status once its last fragment has arrived."""
        self.refusal = rejection
        self._remove_file()

    def _data_set_complete(self) -> None:
        command, context = self.command, self.context
        assert command is not None and context is not None
        self.command = self.context = None
        refusal, self.refusal = self.refusal, None
        if refusal is not None:
            status = self.scp.refuse(
                refusal,
                command.affected_sop_class,
                command.affected_sop_instance,
                self.request.calling_ae,
                self.cid,
            )
        else:
            status = self._store(command, context)
        self.reader.sendall(ul.p_data(context.context_id, ul.response(command, status)))

    def _store(self, command: ul.Command, context: ul.ContextResult) -> int:
        assert self.file is not None and self.temp is not None
        self.file.close()
        self.file = None
        temp, self.temp = self.temp, None
        try:
            return self.scp.store(
                temp,
                command.affected_sop_class,
                command.affected_sop_instance,
                self.request.calling_ae,
                context.transfer_syntax,
                self.cid,
                self.digest.hexdigest(),
                bytes(self.head),
            )
        except Exception:  # a fault of ours: the peer gets a failure, the node goes on
            log.exception("storing an instance failed", extra={"cid": self.cid})
            return PROCESSING_FAILURE
        finally:
            temp.unlink(missing_ok=True)

    def _remove_file(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)
            self.temp = None

    def _discard_partial(self) -> None:
        """An association that ends mid-data-set leaves nothing behind."""
        if self.temp is not None:
            log.warning(
                "connection closed mid-transfer: partial instance discarded",
                extra={"cid": self.cid},
            )
        self._remove_file()
