"""The storage SCP: C-ECHO and C-STORE (PS3.4 Annex A and B) into the durable spool.

Each connection runs in its own thread over the upper layer in ``scp.upper_layer``, admitted
by ``scp.admission`` (limits on connections and associations, in all and per address), its
association negotiated here within one deadline, its messages handled by ``scp.session``. A
received data set streams straight into a temp file in the spool's ``tmp/`` behind a File
Meta header the node writes, so a 500 MB multi-frame never sits in memory and the bytes on
disk are the bytes that came over the wire. ``store`` then checks the instance, moves that
very file into ``store/`` (fsync, rename, fsync directory), lets the injected sink commit its
index row, and only then is Success sent. The directory fsync and the index commit are
shared by the instances of concurrent associations waiting at the same moment
(``scp.group_commit``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import shutil
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.tag import BaseTag, Tag

from config import SCPSettings
from scp import header
from scp import tls as tls_contexts
from scp import upper_layer as ul
from scp.admission import Admission, Limits
from scp.group_commit import CommitFailed, GroupCommit
from scp.header import HeaderValues
from scp.pdu_reader import PDUReader, PeerClosed
from scp.policy import AssociationPolicy
from scp.session import Session
from scp.sink import InstanceSink, ReceivedInstance, Refusal
from scp.sop_classes import (
    CT_STORAGE,
    TRANSFER_SYNTAXES,
    VERIFICATION,
    is_ct,
    other_storage_classes,
)
from scp.spool import Spool
from scp.uids import has_leading_zero, name_hash, uid_hash
from scp.validation import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    SUCCESS,
    Identity,
    Rejection,
    check_free_space,
    check_identity,
    check_size,
)

log = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20
# The largest A-ASSOCIATE-RQ read: 128 presentation contexts proposing 30 transfer
# syntaxes each take about 110 kB.
MAX_ASSOCIATE_RQ = 1 << 18
_STOP_GRACE = 10.0
_REFUSAL_LOG_INTERVAL = 5.0

# As tag numbers: dcmread otherwise looks every keyword up again for every instance.
_HEADER_TAG_NUMBERS: list[BaseTag] = [Tag(keyword) for keyword in header.HEADER_TAGS]


class TLSRefused(Exception):
    """The TLS handshake failed: the peer gets no association, the log its address and why."""


@dataclass(frozen=True)
class StoreLimits:
    max_instance_bytes: int
    min_free_bytes: int


class StorageSCP:
    """A running (or startable) storage SCP bound to one spool and one sink."""

    def __init__(self, settings: SCPSettings, spool: Spool, sink: InstanceSink) -> None:
        self.settings = settings
        self.spool = spool
        self.sink = sink
        self.limits = StoreLimits(
            settings.max_instance_mb * 2**20, settings.min_free_disk_mb * 2**20
        )
        self.policy = AssociationPolicy(settings.allowed_callers)
        storage = sorted(CT_STORAGE)
        if settings.other_storage == "discard":
            storage += other_storage_classes()
        self.supported: dict[str, tuple[str, ...]] = {uid: TRANSFER_SYNTAXES for uid in storage}
        self.supported[VERIFICATION] = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
        self._locks = [threading.Lock() for _ in range(64)]
        self._group_commit = GroupCommit(spool, sink)
        self.admission = Admission(
            Limits(
                settings.max_unassociated,
                settings.max_unassociated_per_address,
                settings.max_associations,
                settings.max_associations_per_address,
            )
        )
        self._last_refusal_log = 0.0
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._sessions: set[threading.Thread] = set()
        self._sessions_lock = threading.Lock()
        self._tls = self._ssl_context()
        self._last = threading.local()

    def last_rejection(self) -> str:
        """The reason code of this thread's last rejected ``store`` (for callers other than
        an association, which only need the status: the HTTP upload names reasons)."""
        return str(getattr(self._last, "reason", ""))

    @property
    def max_instance_bytes(self) -> int:
        return self.limits.max_instance_bytes

    @property
    def running(self) -> bool:
        return self._listener is not None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0: any free port)."""
        if self._listener is None:
            raise RuntimeError("the SCP is not running")
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        """Listen and accept in a background thread.

        SO_REUSEPORT lets several receiving processes share the port (``scp.processes``),
        the kernel spreading connections over them. Only then: with it, a second node
        started by mistake on a port a node of the same user already serves would start
        without an error and silently take part of its associations, with its own
        settings and data directory.
        """
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.settings.processes > 1:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            listener.bind((self.settings.host, self.settings.port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        listener.settimeout(0.5)
        self._listener = listener
        self._stopping.clear()
        threading.Thread(
            target=self._accept_loop, args=(listener,), name="scp-accept", daemon=True
        ).start()
        if self.policy.is_open:
            log.warning("no allowed_callers configured: accepting associations from any AE title")
        log.info(
            "storage SCP %s listening on %s:%d%s",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            " (TLS)" if self._tls else "",
        )

    def stop(self) -> None:
        """Stop accepting; associations in progress get a grace period to finish."""
        listener, self._listener = self._listener, None
        self._stopping.set()
        if listener is not None:
            listener.close()
        with self._sessions_lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.join(_STOP_GRACE)

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.settings.tls
        if not tls.enabled:
            return None
        return tls_contexts.server_context(
            certificate=tls.certificate,
            private_key=tls.private_key,
            passphrase_file=tls.private_key_passphrase_file,
            ca_certificates=tls.ca_certificates,
            require_client_certificate=tls.require_client_certificate,
            profile=tls.profile,
            min_version=tls.min_version,
        )

    # -- connections ----------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, address = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            refused = self.admission.connect(address[0])
            if refused is not None:
                conn.close()  # before any thread or buffer is spent on it
                self._log_refused_connection(address[0], refused)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(
                target=self._serve, args=(conn, address[0]), name="scp-association", daemon=True
            )
            with self._sessions_lock:
                self._sessions.add(thread)
            thread.start()

    def _log_refused_connection(self, address: str, reason: str) -> None:
        """At most one line per few seconds: a flood must not flood the log too."""
        now = time.monotonic()
        if now - self._last_refusal_log >= _REFUSAL_LOG_INTERVAL:
            self._last_refusal_log = now
            log.warning("connection from %s closed at once: %s", address, reason)

    def _serve(self, conn: socket.socket, address: str) -> None:
        cid = secrets.token_hex(4)
        extra = {"cid": cid}
        associated = False
        try:
            reader, request, identity = self._handshake(conn, address, extra)
            conn = reader.conn
            rejection = self._rejection(request, address, identity)
            refused = None if rejection else self.admission.associate(address)
            if refused is not None:
                rejection = (2, 3, 2)  # transient, service provider (presentation), local limit
            if rejection is not None:
                reader.sendall(ul.associate_rj(*rejection))
                log.warning(
                    "association from %s rejected (%s)%s",
                    request.calling_ae,
                    "/".join(map(str, rejection)),
                    f": {refused}" if refused else "",
                    extra=extra,
                )
                return
            associated = True
            results = ul.negotiate(request.contexts, self.supported)
            reader.sendall(ul.associate_ac(request, results, self.settings.pdu_limit))
            log.info("association accepted: calling AE %s", request.calling_ae, extra=extra)
            Session(self, reader, request, results, cid).run()
        except ul.ProtocolError as exc:
            log.warning(
                "protocol error, association aborted (source %d, reason %d): %s",
                exc.source,
                exc.reason,
                exc,
                extra=extra,
            )
            _send_quietly(conn, ul.abort(exc.source, exc.reason))
        except TimeoutError as exc:
            if associated:
                log.warning("%s: association aborted", exc, extra=extra)
                _send_quietly(conn, ul.abort(ul.SERVICE_USER))
            else:  # the ARTIM timer's end: close the connection (PS3.8 9.2.3, AA-2)
                log.warning("no A-ASSOCIATE-RQ within acse_timeout: connection closed", extra=extra)
        except TLSRefused as exc:
            log.warning("TLS handshake from %s refused: %s", address, exc, extra=extra)
        except PeerClosed:
            log.warning("connection closed by the peer", extra=extra)
        except (OSError, ssl.SSLError) as exc:
            log.warning("connection from %s lost: %s", address, exc, extra=extra)
        except Exception:  # a fault of ours must not leave the peer waiting
            log.exception("association failed: aborted", extra=extra)
            _send_quietly(conn, ul.abort(ul.SERVICE_PROVIDER, ul.NOT_SPECIFIED))
        finally:
            conn.close()
            self.admission.close(address, associated)
            with self._sessions_lock:
                self._sessions.discard(threading.current_thread())

    def _handshake(
        self, conn: socket.socket, address: str, extra: dict[str, str]
    ) -> tuple[PDUReader, ul.AssociateRequest, tuple[str, str] | None]:
        """The TLS handshake (if any) and the A-ASSOCIATE-RQ, within one ``acse_timeout``
        deadline that no trickle of bytes renews; with the client certificate's (subject
        CN, SHA-256 fingerprint) when one was verified."""
        deadline = time.monotonic() + self.settings.acse_timeout
        identity = None
        if self._tls is not None:
            conn.settimeout(self.settings.acse_timeout)  # a deadline for the whole handshake
            try:
                tls_conn = self._tls.wrap_socket(conn, server_side=True)
            except ssl.SSLError as exc:
                raise TLSRefused(tls_contexts.failure_reason(exc)) from exc
            conn = tls_conn
            identity = tls_contexts.peer_identity(tls_conn)
            log.info(
                "TLS %s %s from %s, client certificate %s",
                tls_conn.version(),
                (tls_conn.cipher() or ("?",))[0],
                address,
                f"CN={identity[0]!r} sha256={identity[1]}" if identity else "none",
                extra=extra,
            )
        reader = PDUReader(conn)
        log.info("association requested from %s", address, extra=extra)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("TLS handshake took the whole acse_timeout")
        kind, body = reader.next(MAX_ASSOCIATE_RQ, left)
        if kind != ul.ASSOCIATE_RQ:
            reason = ul.UNEXPECTED_PDU if 1 <= kind <= 7 else ul.UNRECOGNIZED_PDU
            raise ul.ProtocolError(
                f"expected A-ASSOCIATE-RQ, got PDU type {kind:#04x}", reason=reason
            )
        return reader, ul.parse_associate_rq(bytes(body)), identity

    def _rejection(
        self,
        request: ul.AssociateRequest,
        address: str,
        identity: tuple[str, str] | None = None,
    ) -> tuple[int, int, int] | None:
        """Why an association is refused (PS3.8 9.3.4 result, source, reason), or None."""
        if not request.protocol_version & 1:
            return (1, 2, 2)
        if request.application_context != ul.APPLICATION_CONTEXT:
            return (1, 1, 2)
        if (
            self.settings.require_called_ae_title
            and request.called_ae != self.settings.ae_title.strip()
        ):
            return (1, 1, 7)
        if not self.policy.allows(request.calling_ae, address, identity):
            log.warning(
                "calling AE title %s not allowed from %s with client certificate %s",
                request.calling_ae,
                address,
                f"CN={identity[0]!r}" if identity else "none",
            )
            return (1, 1, 3)
        return None

    # -- storing --------------------------------------------------------------------------

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
    ) -> int:
        """Check a received instance and make it durable; the DIMSE status to answer.
        ``sha256`` of the data set bytes and ``head``, the file's first bytes, when the
        caller hashed and kept them as they arrived."""
        self._last.reason = ""
        if not is_ct(sop_class):
            self.sink.refused(Refusal("discarded", SUCCESS, "not_ct", sop_class, calling))
            log.info(
                "instance %s of SOP class %s discarded (not CT)",
                uid_hash(sop_instance),
                sop_class,
                extra={"cid": cid},
            )
            return SUCCESS
        free = shutil.disk_usage(self.spool.root).free
        size = temp.stat().st_size
        rejection = check_free_space(free, self.limits.min_free_bytes) or check_size(
            size, self.limits.max_instance_bytes
        )
        if rejection:
            return self.refuse(rejection, sop_class, sop_instance, calling, cid)
        outcome = _parse_header(temp, sop_class, sop_instance, transfer_syntax, head)
        if isinstance(outcome, Rejection):
            return self.refuse(outcome, sop_class, sop_instance, calling, cid)
        values, identity, meta_end = outcome
        if has_leading_zero(sop_instance):
            log.warning(
                "SOP Instance UID %s has a component with a leading zero (PS3.5 9.1)",
                uid_hash(sop_instance),
                extra={"cid": cid},
            )
        sha256 = sha256 or _sha256_from(temp, meta_end)
        with self._locks[int(name_hash(sop_instance)[:8], 16) % len(self._locks)]:
            return self._commit(temp, identity, values, sha256, size, calling, transfer_syntax, cid)

    def _commit(
        self,
        temp: Path,
        identity: Identity,
        values: HeaderValues,
        sha256: str,
        size: int,
        calling: str,
        transfer_syntax: str,
        cid: str,
    ) -> int:
        previous = self.sink.stored_copy(identity.sop_instance_uid)
        if previous is not None and previous.sha256 == sha256:
            log.info(
                "instance %s received again, identical: kept once",
                uid_hash(identity.sop_instance_uid),
                extra={"cid": cid},
            )
            return SUCCESS
        relative = Spool.relative_path(
            identity.study_uid, identity.series_uid, identity.sop_instance_uid, sha256
        )
        try:
            self.spool.sync_file(temp)
            final = self.spool.move_in(temp, relative)
        except OSError as exc:
            rejection = Rejection(OUT_OF_RESOURCES, "spool_write_failed", exc.strerror or str(exc))
            return self.refuse(
                rejection, identity.sop_class_uid, identity.sop_instance_uid, calling, cid
            )
        received = ReceivedInstance(
            identity, values, relative, sha256, size, transfer_syntax, calling, previous
        )
        try:
            self._group_commit.commit(received, final.parent)
        except CommitFailed as exc:
            log.error(
                "making instance %s durable failed: %s",
                uid_hash(identity.sop_instance_uid),
                exc,
                extra={"cid": cid},
                exc_info=exc.__cause__,
            )
            self._remove_unless_indexed(identity.sop_instance_uid, relative)
            return OUT_OF_RESOURCES
        if previous is not None:
            self.spool.remove(previous.relative_path)
            log.warning(
                "instance %s received again with different content: replaced",
                uid_hash(identity.sop_instance_uid),
                extra={"cid": cid},
            )
        if log.isEnabledFor(logging.DEBUG):  # the hashes cost more than the rest of the line
            log.debug(
                "stored instance %s of series %s",
                uid_hash(identity.sop_instance_uid),
                uid_hash(identity.series_uid),
                extra={"cid": cid},
            )
        return SUCCESS

    def _remove_unless_indexed(self, sop_instance_uid: str, relative: str) -> None:
        """Remove a file whose row did not commit, unless another receiver sharing the spool
        indexed the same instance at the same path meanwhile; with the index unreachable the
        file stays (start-up recovery removes it once it is old and still unindexed)."""
        try:
            copy = self.sink.stored_copy(sop_instance_uid)
        except Exception:
            log.warning("index unreachable: unindexed file left for start-up recovery")
            return
        if copy is None or copy.relative_path != relative:
            self.spool.remove(relative)

    def refuse(
        self, rejection: Rejection, sop_class: str, sop_instance: str, calling: str, cid: str
    ) -> int:
        """Log and count a refused instance; the status its sender gets."""
        self._last.reason = rejection.reason
        log.warning(
            "instance %s rejected with 0x%04X (%s): %s",
            uid_hash(sop_instance),
            rejection.status,
            rejection.reason,
            rejection.message,
            extra={"cid": cid},
        )
        try:
            self.sink.refused(
                Refusal("rejected", rejection.status, rejection.reason, sop_class, calling)
            )
        except Exception:
            log.exception("could not record a rejection", extra={"cid": cid})
        return rejection.status


def _parse_header(
    temp: Path, sop_class: str, sop_instance: str, transfer_syntax: str, head: bytes = b""
) -> tuple[HeaderValues, Identity, int] | Rejection:
    """The attributes validation and the index need, checked against the command; the
    values, the identity and where the data set starts, or why it cannot be stored.
    ``scp.header`` reads them unless it cannot, or finds a reason to refuse: pydicom, which
    reads more kinds of damaged data sets, then has the last word. Whatever either raises
    on a hostile data set (deep nesting: RecursionError; lengths past the end: struct or
    EOF errors; text no codec takes) means the same to the sender: cannot understand."""
    try:
        fast = header.read(temp, transfer_syntax, head)
        if fast is not None:
            identity = check_identity(fast, sop_class, sop_instance)
            if not isinstance(identity, Rejection):
                return fast, identity, fast.meta_end
        dataset = dcmread(temp, stop_before_pixels=True, specific_tags=_HEADER_TAG_NUMBERS)
        identity = check_identity(dataset, sop_class, sop_instance)
        meta_end = 144 + int(dataset.file_meta.FileMetaInformationGroupLength)
    except Exception as exc:  # see the docstring
        return Rejection(
            CANNOT_UNDERSTAND, "undecodable", f"data set cannot be parsed: {type(exc).__name__}"
        )
    if isinstance(identity, Rejection):
        return identity
    return dataset, identity, meta_end


def _send_quietly(conn: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(data)


def _sha256_from(path: Path, offset: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
