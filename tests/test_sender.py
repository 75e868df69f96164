"""The C-STORE SCU against real peers: DCMTK's storescp, and a scripted pynetdicom SCP that
answers whatever status a test needs, to pin down the outcome classification."""

from __future__ import annotations

import argparse
import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from cli import status
from config import OutboxSettings
from node.index import Index
from node.index.deliveries import ResultObject, enqueue
from node.outbox import Outbox
from scp.sender import Destination, Outcome, classify_status, store
from scp.tls import client_context
from tests.factory import ct_series, write_series
from tests.node_process import free_port, require, wait_for_port

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, Outcome.DONE),
        (0xB000, Outcome.DONE),
        (0xB007, Outcome.DONE),
        (0x0111, Outcome.DONE),  # duplicate SOP instance: a re-send after a sender died
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


@pytest.fixture
def tls_pacs(tls_files: dict[str, Path]) -> Iterator[object]:
    """A pynetdicom TLS SCP presenting the named certificate of ``tls_files``."""
    servers: list[ThreadedAssociationServer] = []

    def start(certificate: str) -> Destination:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_files[certificate], tls_files[f"{certificate}_key"])
        ae = AE(ae_title="PACS")
        ae.add_supported_context(CT, ExplicitVRLittleEndian)
        server = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            ssl_context=context,
            evt_handlers=[(evt.EVT_C_STORE, lambda _event: 0x0000)],
        )
        assert server is not None
        servers.append(server)
        ours = client_context(ca_certificates=str(tls_files["ca"]))
        port = int(server.server_address[1])
        return Destination(
            "pacs", "127.0.0.1", port, "PACS", tls=ours, tls_hostname="localhost", timeout=5
        )

    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize(
    ("certificate", "reason"),
    [
        ("cert", "success"),
        ("stranger", "certificate refused: unable to get local issuer certificate (code 20)"),
        ("otherhost", "certificate refused: Hostname mismatch"),
        ("expired", "certificate refused: certificate has expired (code 10)"),
    ],
)
def test_a_refused_pacs_certificate_is_recorded_with_the_tls_reason(
    tls_pacs: object, tls_files: dict[str, Path], files: list[Path], certificate: str, reason: str
) -> None:
    made = tls_files[certificate].stat().st_mtime
    if certificate == "expired":  # valid for 0 days: expired a second after it was made
        time.sleep(max(0.0, 1.1 - (time.time() - made)))
    deliveries = store(files, tls_pacs(certificate))  # type: ignore[operator]
    assert {d.outcome for d in deliveries} == {
        Outcome.DONE if certificate == "cert" else Outcome.RETRY
    }
    assert reason in deliveries[0].reason


def test_the_tls_reason_reaches_the_outbox_and_ctnode_status(
    tls_pacs: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    index = Index(tmp_path)
    results = tmp_path / "results"
    paths = write_series(ct_series(1, 8, 8, seed="tls-outbox"), results / "job1")
    with index.transaction() as conn:
        enqueue(
            conn,
            1,
            "s",
            [ResultObject("sc", "1.2", str(paths[0].relative_to(results)))],
            ["pacs"],
            0.0,
        )
    destination = tls_pacs("stranger")  # type: ignore[operator]
    Outbox(index, results, {"pacs": destination}, OutboxSettings(), clock=lambda: 0.0).tick()
    [row] = index.deliveries("PENDING", 10)  # what GET /deliveries?state=pending answers
    index.close()
    assert "unable to get local issuer certificate" in row["reason"]
    monkeypatch.setenv("CTNODE_STORAGE__DATA_DIR", str(tmp_path))
    assert status.run(argparse.Namespace(config=None, json=True)) == 0
    [shown] = json.loads(capsys.readouterr().out)["retrying_deliveries"]
    assert shown["reason"] == row["reason"]


def test_delivers_over_tls_to_dcmtk_storescp(
    tmp_path: Path, files: list[Path], tls_files: dict[str, Path]
) -> None:
    """Interoperability: the node's default profile (BCP 195 Non-Downgrading) against
    DCMTK's (the same by default), verifying storescp's certificate and host name."""
    require("storescp")
    port = free_port()
    out = tmp_path / "pacs"
    out.mkdir()
    peer = subprocess.Popen(
        [
            *("storescp", "+tls", str(tls_files["key"]), str(tls_files["cert"]), "-ic"),
            *("-aet", "PACS", "-od", str(out), str(port)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    context = client_context(ca_certificates=str(tls_files["ca"]))
    try:
        wait_for_port(port)
        destination = Destination(
            "dcmtk", "127.0.0.1", port, "PACS", tls=context, tls_hostname="localhost"
        )
        deliveries = store(files, destination)
    finally:
        peer.terminate()
        peer.wait()
    assert [d.outcome for d in deliveries] == [Outcome.DONE] * 3
    assert len(list(out.iterdir())) == 3
