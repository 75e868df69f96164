"""The C-STORE SCU against real peers: DCMTK's storescp, and a scripted pynetdicom SCP that
answers whatever status a test needs, to pin down the outcome classification."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from scp.sender import Destination, Outcome, classify_status, store
from tests.factory import ct_series, write_series
from tests.node_process import free_port, require, wait_for_port

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, Outcome.DONE),
        (0xB000, Outcome.DONE),
        (0xB007, Outcome.DONE),
        (0xA700, Outcome.RETRY),
        (0xA7FF, Outcome.RETRY),
        (0xA900, Outcome.FAILED),
        (0xC000, Outcome.FAILED),
        (0xC211, Outcome.FAILED),
        (0x0122, Outcome.FAILED),
        (0x0211, Outcome.FAILED),
    ],
)
def test_status_classification(status: int, outcome: Outcome) -> None:
    assert classify_status(status)[0] == outcome


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return write_series(ct_series(3, 16, 16, seed="send"), tmp_path / "out")


def scripted_pacs(
    statuses: list[int],
    *,
    ae_title: str = "PACS",
    max_associations: int = 10,
    contexts: tuple[str, ...] = (CT,),
    port: int = 0,
) -> tuple[ThreadedAssociationServer, list[str]]:
    """A pynetdicom SCP that answers the given statuses in turn and records what it got."""
    received: list[str] = []
    answers = iter(statuses)

    def handle(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return next(answers, 0x0000)

    ae = AE(ae_title=ae_title)
    ae.require_called_aet = True
    ae.maximum_associations = max_associations
    for sop_class in contexts:
        ae.add_supported_context(sop_class, ExplicitVRLittleEndian)
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)]
    )
    assert server is not None
    return server, received


@pytest.fixture
def pacs() -> Iterator[object]:
    servers: list[ThreadedAssociationServer] = []

    def start(*args: object, **kwargs: object) -> tuple[Destination, list[str]]:
        server, received = scripted_pacs(*args, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        port = int(server.server_address[1])
        return Destination("pacs", "127.0.0.1", port, "PACS", timeout=5), received

    yield start
    for server in servers:
        server.shutdown()


def test_statuses_map_to_outcomes_per_object(pacs: object, files: list[Path]) -> None:
    destination, received = pacs([0x0000, 0xA700, 0xA900])  # type: ignore[operator]
    deliveries = store(files, destination)
    assert [d.outcome for d in deliveries] == [Outcome.DONE, Outcome.RETRY, Outcome.FAILED]
    assert [d.status for d in deliveries] == [0x0000, 0xA700, 0xA900]
    assert received == [d.sop_instance_uid for d in deliveries]


def test_unreachable_destination_is_retried(files: list[Path]) -> None:
    closed = free_port()
    deliveries = store(files, Destination("down", "127.0.0.1", closed, "PACS", timeout=2))
    assert {d.outcome for d in deliveries} == {Outcome.RETRY}


def test_permanent_rejection_fails(pacs: object, files: list[Path]) -> None:
    destination, _ = pacs([], ae_title="PACS")  # type: ignore[operator]
    wrong = Destination("pacs", destination.host, destination.port, "SOMEONE-ELSE", timeout=5)
    deliveries = store(files, wrong)
    assert {d.outcome for d in deliveries} == {Outcome.FAILED}
    assert "permanent" in deliveries[0].reason


def test_transient_rejection_is_retried(pacs: object, files: list[Path]) -> None:
    destination, _ = pacs([], max_associations=1)  # type: ignore[operator]
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(CT, ExplicitVRLittleEndian)
    busy = holder.associate(destination.host, destination.port, ae_title="PACS")
    assert busy.is_established
    try:
        deliveries = store(files, destination)
    finally:
        busy.release()
    assert {d.outcome for d in deliveries} == {Outcome.RETRY}
    assert "transient" in deliveries[0].reason


def test_refused_context_fails(pacs: object, files: list[Path]) -> None:
    destination, received = pacs([], contexts=("1.2.840.10008.5.1.4.1.1.7",))  # type: ignore[operator]
    deliveries = store(files, destination)
    assert {d.outcome for d in deliveries} == {Outcome.FAILED} and received == []


def test_delivers_stored_bytes_to_dcmtk_storescp(tmp_path: Path, files: list[Path]) -> None:
    require("storescp")
    port = free_port()
    out = tmp_path / "pacs"
    out.mkdir()
    peer = subprocess.Popen(
        ["storescp", "+B", "-aet", "PACS", str(port), "-od", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        deliveries = store(files, Destination("dcmtk", "127.0.0.1", port, "PACS"))
    finally:
        peer.terminate()
        peer.wait()
    assert [d.outcome for d in deliveries] == [Outcome.DONE] * 3
    got = {pydicom.dcmread(p).SOPInstanceUID: p for p in out.iterdir()}
    for path in files:
        original = pydicom.dcmread(path)
        assert pydicom.dcmread(got[original.SOPInstanceUID]) == original
