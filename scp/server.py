"""The storage SCP: C-ECHO and C-STORE (PS3.4 Annex A and B) into the durable spool.

pynetdicom streams each received data set into a temp file in the spool's ``tmp/``
(``STORE_RECV_CHUNKED_DATASET``), so a 500 MB multi-frame never sits in memory and the bytes
on disk are the bytes that came over the wire, behind a File Meta header written by the node.
``handle_store`` checks the instance, moves that very file into ``store/`` (fsync, rename,
fsync directory), lets the injected sink commit its index row, and only then answers Success.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynetdicom.dimse_messages
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import ThreadedAssociationServer

from config import SCPSettings
from scp import policy as assoc_policy
from scp import tuning
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

# The attributes validation and the index use: parsing only these is a third of the cost
# of parsing a whole CT header.
HEADER_TAGS: list[str] = [
    "SpecificCharacterSet",
    "ImageType",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "Modality",
    "StudyDescription",
    "SeriesDescription",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "BodyPartExamined",
    "SliceThickness",
    "ConvolutionKernel",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "FrameOfReferenceUID",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "PixelSpacing",
]


@dataclass(frozen=True)
class StoreLimits:
    max_instance_bytes: int
    min_free_bytes: int


class _NodeServer(ThreadedAssociationServer):
    """The association server with the socket options the node needs.

    SO_REUSEPORT lets several receiving processes share the port (``scp.processes``), the
    kernel spreading connections over them; TCP_NODELAY sends each C-STORE response at once.
    """

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[Any, Any]:
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address


class _NodeAE(AE):
    policy: assoc_policy.AssociationPolicy

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_class"] = _NodeServer
        return super().make_server(*args, **kwargs)


class StorageSCP:
    """A running (or startable) storage SCP bound to one spool and one sink."""

    def __init__(self, settings: SCPSettings, spool: Spool, sink: InstanceSink) -> None:
        self.settings = settings
        self.spool = spool
        self.sink = sink
        self.limits = StoreLimits(
            settings.max_instance_mb * 2**20, settings.min_free_disk_mb * 2**20
        )
        self.policy = assoc_policy.AssociationPolicy(settings.allowed_callers)
        self._locks = [threading.Lock() for _ in range(64)]
        self._server: ThreadedAssociationServer | None = None
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        s = self.settings
        ae = _NodeAE(ae_title=s.ae_title)
        ae.policy = self.policy
        ae.require_called_aet = s.require_called_ae_title
        ae.maximum_associations = s.max_associations
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        ae.maximum_pdu_size = s.max_pdu_size
        ae.add_supported_context(VERIFICATION)
        storage = sorted(CT_STORAGE)
        if s.other_storage == "discard":
            storage += other_storage_classes()
        for sop_class in storage:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0: any free port)."""
        if self._server is None:
            raise RuntimeError("the SCP is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start listening in background threads."""
        assoc_policy.install()
        tuning.fast_context_copy()
        _route_receive_temp_files(self.spool.tmp_dir)
        _config.STORE_RECV_CHUNKED_DATASET = True
        if self.policy.is_open:
            log.warning("no allowed_callers configured: accepting associations from any AE title")
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
        ]
        server = self.ae.start_server(
            (self.settings.host, self.settings.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=self._ssl_context(),
        )
        self._server = server
        log.info(
            "storage SCP %s listening on %s:%d%s",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            " (TLS)" if self.settings.tls.enabled else "",
        )

    def stop(self) -> None:
        """Stop accepting, let nothing new start, and close the listener."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.settings.tls
        if not tls.enabled:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls.certificate, tls.private_key)
        if tls.ca_certificates:
            context.load_verify_locations(cafile=tls.ca_certificates)
            context.verify_mode = (
                ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
            )
        elif tls.require_client_certificate:
            raise ValueError("scp.tls.require_client_certificate needs scp.tls.ca_certificates")
        return context

    # -- events ---------------------------------------------------------------------------

    def _on_requested(self, event: evt.Event) -> None:
        cid = secrets.token_hex(4)
        event.assoc.ctnode_cid = cid  # type: ignore[attr-defined]
        log.info(
            "association requested from %s:%s",
            event.assoc.requestor.address,
            event.assoc.requestor.port,
            extra={"cid": cid},
        )

    def _on_accepted(self, event: evt.Event) -> None:
        log.info(
            "association accepted: calling AE %s",
            event.assoc.requestor.ae_title,
            extra={"cid": _cid(event)},
        )

    def _on_rejected(self, event: evt.Event) -> None:
        log.warning(
            "association from %s rejected",
            event.assoc.requestor.ae_title,
            extra={"cid": _cid(event)},
        )

    def _on_aborted(self, event: evt.Event) -> None:
        log.warning("association aborted", extra={"cid": _cid(event)})

    def _on_released(self, event: evt.Event) -> None:
        log.info("association released", extra={"cid": _cid(event)})

    def _on_conn_close(self, event: evt.Event) -> None:
        """Remove the temp file of a data set the peer never finished sending."""
        message = getattr(event.assoc.dimse, "message", None)
        partial = getattr(message, "_data_set_file", None)
        if partial is not None:
            partial.close()
            Path(partial.name).unlink(missing_ok=True)
            log.warning(
                "connection closed mid-transfer: partial instance discarded",
                extra={"cid": _cid(event)},
            )

    def _handle_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _handle_store(self, event: evt.Event) -> int:
        cid = _cid(event)
        request = event.request
        assert isinstance(request, C_STORE)
        sop_class = str(request.AffectedSOPClassUID)
        sop_instance = str(request.AffectedSOPInstanceUID)
        calling = str(event.assoc.requestor.ae_title)
        temp = Path(event.dataset_path)
        try:
            status = self._store(temp, sop_class, sop_instance, calling, event, cid)
        finally:
            temp.unlink(missing_ok=True)
        return status

    def _store(
        self,
        temp: Path,
        sop_class: str,
        sop_instance: str,
        calling: str,
        event: evt.Event,
        cid: str,
    ) -> int:
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
            return self._refuse(rejection, sop_class, sop_instance, calling, cid)

        try:
            header = dcmread(temp, stop_before_pixels=True, specific_tags=HEADER_TAGS)
            identity = check_identity(header, sop_class, sop_instance)
            meta_end = 144 + int(header.file_meta.FileMetaInformationGroupLength)
        except (
            InvalidDicomError,
            ValueError,
            KeyError,
            TypeError,
            EOFError,
            AttributeError,
            OSError,
        ) as exc:
            rejection = Rejection(
                CANNOT_UNDERSTAND, "undecodable", f"data set cannot be parsed: {type(exc).__name__}"
            )
            return self._refuse(rejection, sop_class, sop_instance, calling, cid)
        if isinstance(identity, Rejection):
            return self._refuse(identity, sop_class, sop_instance, calling, cid)
        if has_leading_zero(sop_instance):
            log.warning(
                "SOP Instance UID %s has a component with a leading zero (PS3.5 9.1)",
                uid_hash(sop_instance),
                extra={"cid": cid},
            )

        sha256 = _sha256_from(temp, meta_end)
        with self._locks[int(name_hash(sop_instance)[:8], 16) % len(self._locks)]:
            return self._commit(temp, identity, header, sha256, size, calling, event, cid)

    def _commit(
        self,
        temp: Path,
        identity: Identity,
        header: Any,
        sha256: str,
        size: int,
        calling: str,
        event: evt.Event,
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
            self.spool.place(temp, relative)
        except OSError as exc:
            rejection = Rejection(OUT_OF_RESOURCES, "spool_write_failed", exc.strerror or str(exc))
            return self._refuse(
                rejection, identity.sop_class_uid, identity.sop_instance_uid, calling, cid
            )
        received = ReceivedInstance(
            identity=identity,
            header=header,
            relative_path=relative,
            sha256=sha256,
            size=size,
            transfer_syntax=str(event.context.transfer_syntax),
            calling_ae=calling,
            replaces=previous,
        )
        try:
            self.sink.record(received)
        except Exception:
            log.exception(
                "indexing instance %s failed",
                uid_hash(identity.sop_instance_uid),
                extra={"cid": cid},
            )
            self.spool.remove(relative)
            return OUT_OF_RESOURCES
        if previous is not None:
            self.spool.remove(previous.relative_path)
            log.warning(
                "instance %s received again with different content: replaced",
                uid_hash(identity.sop_instance_uid),
                extra={"cid": cid},
            )
        log.debug(
            "stored instance %s of series %s",
            uid_hash(identity.sop_instance_uid),
            uid_hash(identity.series_uid),
            extra={"cid": cid},
        )
        return SUCCESS

    def _refuse(
        self, rejection: Rejection, sop_class: str, sop_instance: str, calling: str, cid: str
    ) -> int:
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


def _cid(event: evt.Event) -> str:
    return str(getattr(event.assoc, "ctnode_cid", "-"))


def _sha256_from(path: Path, offset: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _route_receive_temp_files(folder: Path) -> None:
    """Make pynetdicom write received data sets into the spool's ``tmp/`` (same file system
    as ``store/``, so placing a file is a rename, not a copy). One spool per process."""
    pynetdicom.dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[attr-defined,assignment]
        tempfile.NamedTemporaryFile, dir=os.fspath(folder)
    )
