"""Concurrent requestors in one process against ``ctnode serve``: no association stalls.

Eight pynetdicom associations each sending 12 C-STOREs of a CT slice at once used to hang
one or two associations in about half of the runs until the sender's DIMSE timeout. The SCP
had answered; pynetdicom's reactor thread had taken the response off the queue
(``scp.requestor`` explains the race). These tests hold both halves: the race itself,
made deterministic, and the 8 x 12 case run 20 times with every instance stored intact.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from scp.requestor import Requestor
from tests.conftest import TESTDATA
from tests.factory import ct_series
from tests.node_process import NodeProcess

ASSOCIATIONS, STORES, RUNS = 8, 12, 20
PREFIX = "2.25.97531"  # the stress test's instances, apart from the other test's
DIMSE_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    folder = tmp_path_factory.mktemp("stress")
    process = NodeProcess(
        folder / "data", worker__count="0", api__enabled="false", storage__fsync="false"
    ).start()
    yield process
    process.stop()


def _slice() -> Dataset:
    """A real CT slice when the shared test data is there, else a synthetic one of the
    same size (the race needs only a fast answer, not real pixels)."""
    folder = TESTDATA / "chest-ct-100-lung"
    if folder.is_dir():
        return pydicom.dcmread(sorted(folder.glob("*.dcm"))[50])
    return ct_series(1, 512, 512, seed="stress")[0]


def _associate(port: int, ds: Dataset, steady: bool, timeout: float = DIMSE_TIMEOUT) -> Any:
    ae = AE(ae_title="STRESS")
    ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = timeout
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CTNODE")
    assert assoc.is_established
    return Requestor(assoc) if steady else assoc


def _late(assoc: Any) -> None:
    """Schedule the race's threads the unlucky way, every time: after each wake-up at its
    checkpoint the reactor thread runs only once a response is on the queue (at most 1 s
    later), and the sending thread looks for its response 0.3 s after sending."""
    checkpoint, queue = assoc._reactor_checkpoint, assoc.dimse.msg_queue
    wait, get_msg = checkpoint.wait, assoc.dimse.get_msg

    def late_wait(timeout: float | None = None) -> bool:
        woke = bool(wait(timeout))
        deadline = time.monotonic() + 1.0
        while queue.empty() and time.monotonic() < deadline:
            time.sleep(0.001)
        return woke

    def late_get_msg(block: bool = False) -> Any:
        if block:
            time.sleep(0.3)
        return get_msg(block)

    checkpoint.wait = late_wait
    assoc.dimse.get_msg = late_get_msg


def test_the_reactor_race_loses_a_response_and_the_requestor_does_not(node: NodeProcess) -> None:
    """With the same late threads, pynetdicom's own pause loses a response (its reactor
    takes it off the queue); ``Requestor`` loses none."""
    ds = ct_series(1, 16, 16, seed="race")[0]

    def send_three(assoc: Any, first: int) -> list[int | None]:
        statuses = []
        for k in range(first, first + 3):
            copy_ = copy.deepcopy(ds)
            copy_.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k}"
            try:
                statuses.append(getattr(assoc.send_c_store(copy_), "Status", None))
            except RuntimeError:  # the association ended after the lost response
                statuses.append(None)
        return statuses

    plain = _associate(node.port, ds, steady=False, timeout=2.0)
    _late(plain)
    assert None in send_three(plain, 0), "pynetdicom's race no longer shows: drop scp.requestor"
    plain.abort()

    steady = _associate(node.port, ds, steady=True)
    _late(steady.assoc)
    assert send_three(steady, 3) == [0, 0, 0]
    steady.release()


def test_eight_associations_of_twelve_stores_twenty_times(node: NodeProcess) -> None:
    source = _slice()
    buffer = BytesIO()
    source.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    sent: set[str] = set()
    sent_lock = threading.Lock()
    failures: list[str] = []

    def associate_and_send(run: int, k: int, barrier: threading.Barrier) -> None:
        try:
            send(run, k, barrier)
        except Exception as exc:
            failures.append(f"run {run} association {k}: {exc!r}")

    def send(run: int, k: int, barrier: threading.Barrier) -> None:
        ds = pydicom.dcmread(BytesIO(raw))  # each thread its own copy
        assoc = _associate(node.port, ds, steady=True)
        barrier.wait(30)
        for m in range(STORES):
            ds.SOPInstanceUID = f"{PREFIX}{run:02d}{k:02d}{m:02d}"
            started = time.monotonic()
            status = getattr(assoc.send_c_store(ds), "Status", None)
            if status != 0:
                failures.append(f"run {run} association {k} store {m}: status {status}")
                break
            if time.monotonic() - started > DIMSE_TIMEOUT / 2:
                failures.append(f"run {run} association {k} store {m}: stalled")
            with sent_lock:
                sent.add(str(ds.SOPInstanceUID))
        assoc.release()

    for run in range(RUNS):
        barrier = threading.Barrier(ASSOCIATIONS)
        threads = [
            threading.Thread(target=associate_and_send, args=(run, k, barrier))
            for k in range(ASSOCIATIONS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not failures, failures
    assert len(sent) == ASSOCIATIONS * STORES * RUNS
    stored = {
        uid: intact
        for uid, intact in _stored(node.data_dir / "store", source.PixelData).items()
        if uid.startswith(PREFIX)
    }
    assert set(stored) == sent
    assert [uid for uid, intact in stored.items() if not intact] == []
    assert "mid-transfer" not in node.log_text()


def _stored(store: Path, pixels: bytes) -> dict[str, bool]:
    """SOP Instance UID of every stored file -> whether its pixel data are the source's
    and its bytes the ones the index committed (the SHA-256 in its name)."""
    intact = {}
    for path in store.rglob("*.dcm"):
        data = path.read_bytes()
        ds = pydicom.dcmread(BytesIO(data))
        offset = 132 + 12 + int.from_bytes(data[140:144], "little")
        digest = hashlib.sha256(data[offset:]).hexdigest()
        intact[str(ds.SOPInstanceUID)] = ds.PixelData == pixels and path.stem.endswith(digest[:12])
    return intact
