"""Several ``ctnode serve --role ...`` processes over one index, for black-box tests of a
deployment on several hosts (here: several processes on this one): each ``Host`` is one real
process with its own node id, sharing the spool and the index (PostgreSQL, or SQLite on one
host); ``RecordingPacs`` is a pynetdicom PACS that records every C-STORE it answers and,
like a strict PACS, answers 0x0111 (duplicate SOP instance) to an object it already holds.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    CTImageStorage,
    SecondaryCaptureImageStorage,
)

from node.index import Index
from tests.conftest import ctnode_command, subprocess_env
from tests.node_process import free_port


def wait_until(what: str, condition: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class RecordingPacs:
    """Records every C-STORE (SOP Instance UID -> times received); holds each answer back
    ``delay`` seconds so that a sender can be killed between the store and its answer."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.received: Counter[str] = Counter()
        self.answered: list[int] = []
        self.storing = threading.Event()  # set while a store waits for its answer
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage, CTImageStorage):
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.maximum_associations = 20
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        assert server is not None
        self.server = server
        self.port = int(self.server.server_address[1])

    def _store(self, event: evt.Event) -> int:
        uid = str(event.dataset.SOPInstanceUID)
        with self._lock:
            held = self.received[uid] > 0
            self.received[uid] += 1
        self.storing.set()
        time.sleep(self.delay)
        status = 0x0111 if held else 0x0000
        self.answered.append(status)
        self.storing.clear()
        return status

    @property
    def destination(self) -> dict[str, object]:
        return {"name": "pacs", "host": "127.0.0.1", "port": self.port, "ae_title": "PACS"}

    def stop(self) -> None:
        self.server.shutdown()


class Host:
    """One ``ctnode serve --role ROLE --node-id NODE_ID`` process."""

    def __init__(self, role: str, node_id: str, env: dict[str, str], logs: Path) -> None:
        self.role, self.node_id = role, node_id
        self.port = free_port() if role in ("receiver", "all") else 0
        self.env = subprocess_env(
            **{
                "CTNODE_SCP__HOST": "127.0.0.1",
                "CTNODE_SCP__PORT": str(self.port or free_port()),
                "CTNODE_API__ENABLED": "false",
                **env,
            }
        )
        self.log = logs / f"{node_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._lock = threading.Lock()

    def start(self) -> Host:
        """Start the process (nothing to do while it runs: two test threads may race)."""
        with self._lock:
            if self.running():
                return self
            self._start()
        return self

    def _start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ctnode_command("serve", "--role", self.role, "--node-id", self.node_id),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def ready(self, index: Index) -> bool:
        """Registered under its id with this process's pid (and listening, a receiver)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.node_id} exited: {self.log.read_text()[-3000:]}")
        rows = index.query(
            "SELECT pid FROM nodes WHERE node_id = ? AND state = 'running'", (self.node_id,)
        )
        if not rows or rows[0]["pid"] != self.proc.pid:
            return False
        if self.port:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        return True

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        with self._lock:
            self.proc.send_signal(signal.SIGKILL)  # nothing if it is already reaped
            self.proc.wait()
            self.paused = False

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def store(
    port: int, files: Sequence[Path], *, on_ack: Callable[[int], None] | None = None
) -> list[str]:
    """C-STORE ``files`` to a receiver in one association (pynetdicom SCU); returns the SOP
    Instance UIDs the receiver acknowledged (0x0000). ``on_ack`` is called with the count
    after each acknowledgement, inside the association (a test kills the receiver there)."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="CTNODE")
    acknowledged: list[str] = []
    if not assoc.is_established:
        return acknowledged
    try:
        for path in files:
            if not assoc.is_established:
                break  # the receiver went away
            ds = pydicom.dcmread(path)
            try:
                status = assoc.send_c_store(ds)
            except RuntimeError:  # aborted between the check and the send
                break
            if status and status.Status == 0x0000:
                acknowledged.append(str(ds.SOPInstanceUID))
                if on_ack is not None:
                    on_ack(len(acknowledged))
    finally:
        if assoc.is_established:
            assoc.release()
    return acknowledged
