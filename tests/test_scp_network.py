"""The storage SCP on a real port, driven in-process by a pynetdicom SCU.

Each receipt check is asserted twice: the DICOM status the SCU gets, and the side effects
(nothing stored, nothing half-written in the spool, the refusal counted in the index).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from pynetdicom import AE, _config

import config
from config import AllowedCaller, Settings
from node.index import Index
from node.serve import Node
from scp.requestor import Rejection, Requestor, request
from scp.server import StorageSCP
from scp.spool import Spool
from tests import hostile_peer as peer
from tests.conftest import testdata
from tests.factory import ct_series, uid

CT = "1.2.840.10008.5.1.4.1.1.2"


def make_settings(data_dir: Path, **scp: Any) -> Settings:
    base = config.load(None, {})
    return dataclasses.replace(
        base,
        scp=dataclasses.replace(base.scp, host="127.0.0.1", port=0, **scp),
        storage=dataclasses.replace(base.storage, data_dir=str(data_dir)),
        assembly=dataclasses.replace(base.assembly, stable_age=3600.0),
        api=dataclasses.replace(base.api, enabled=False),
    )


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Any]:
    nodes: list[Node] = []

    def start(**scp: Any) -> Node:
        node = Node(make_settings(tmp_path / f"node{len(nodes)}", **scp))
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def associate(
    node: Node,
    calling: str = "TESTSCU",
    called: str = "CTNODE",
    contexts: tuple[str, ...] = (CT,),
    **kwargs: Any,
) -> Requestor:
    ae = AE(ae_title=calling)
    for sop_class in contexts:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    return request(ae, "127.0.0.1", node.scp.port, ae_title=called, **kwargs)


def stored_files(node: Node) -> list[Path]:
    return sorted(node.spool.store_dir.rglob("*.dcm"))


def temp_files(node: Node) -> list[Path]:
    return list(node.spool.tmp_dir.iterdir())


def refusals(node: Node) -> list[tuple[str, int, str]]:
    rows = node.index.query("SELECT outcome, status, reason FROM refusals ORDER BY id")
    return [(r["outcome"], r["status"], r["reason"]) for r in rows]


def raw_file(path: Path, sop_class: str, sop_instance: str, dataset_bytes: bytes) -> Path:
    """A DICOM file whose meta header names ``sop_class``/``sop_instance`` and whose data
    set is ``dataset_bytes`` as given: sent in chunked mode, the C-STORE command comes from
    the meta header and the data set goes over the wire unparsed."""
    meta = Dataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)  # type: ignore[arg-type]
    path.write_bytes(buffer.getvalue() + dataset_bytes)
    return path


def encode(ds: Dataset, *, implicit: bool = False) -> bytes:
    """The data set encoded little endian, explicit VR unless ``implicit``."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def send_raw(node: Node, path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = associate(node)
    assert assoc.is_established
    status = assoc.send_c_store(path)
    assoc.release()
    return int(status.Status)


def test_echo(start_node: Any) -> None:
    assoc = associate(start_node(), contexts=("1.2.840.10008.1.1",))
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_store_series_durably_and_exactly(start_node: Any) -> None:
    node = start_node()
    series = ct_series(5, 16, 16, seed="net")
    assoc = associate(node)
    statuses = [assoc.send_c_store(ds).Status for ds in series]
    assoc.release()
    assert statuses == [0] * 5
    files = stored_files(node)
    assert len(files) == 5 and temp_files(node) == []
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series}
    for path in files:
        stored = pydicom.dcmread(path)
        original = by_uid[str(stored.SOPInstanceUID)]
        assert encode(stored) == encode(original)
        assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    row = node.index.query("SELECT instance_count, state FROM series")[0]
    assert row == {"instance_count": 5, "state": "RECEIVING"}
    calling = {r["calling_ae"] for r in node.index.query("SELECT calling_ae FROM instances")}
    assert calling == {"TESTSCU"}


def test_identical_duplicate_is_stored_once(start_node: Any) -> None:
    node = start_node()
    ds = ct_series(1, 16, 16, seed="dup")[0]
    assoc = associate(node)
    assert [assoc.send_c_store(ds).Status for _ in range(3)] == [0, 0, 0]
    assoc.release()
    assert len(stored_files(node)) == 1
    assert node.index.query("SELECT revision FROM series")[0]["revision"] == 1


def test_changed_duplicate_replaces_the_old_copy(start_node: Any) -> None:
    node = start_node()
    ds = ct_series(1, 16, 16, seed="changed")[0]
    assoc = associate(node)
    assert assoc.send_c_store(ds).Status == 0
    first = stored_files(node)
    ds.WindowCenter = 40
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    files = stored_files(node)
    assert len(files) == 1 and files != first
    assert pydicom.dcmread(files[0]).WindowCenter == 40
    row = node.index.query("SELECT revision, instance_count FROM series")[0]
    assert row == {"revision": 2, "instance_count": 1}


@pytest.mark.parametrize(
    ("mutate", "status", "reason"),
    [
        ("other_instance", 0xA900, "sop_instance_mismatch"),
        ("other_class", 0xA900, "sop_class_mismatch"),
        ("no_study", 0xC000, "invalid_hierarchy_uid"),
        ("bad_series", 0xC000, "invalid_hierarchy_uid"),
        ("garbage", 0xC000, "undecodable"),
    ],
)
def test_bad_instances_are_rejected_and_nothing_stored(
    start_node: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mutate: str,
    status: int,
    reason: str,
) -> None:
    node = start_node()
    ds = ct_series(1, 16, 16, seed="bad")[0]
    command_class, command_instance = CT, str(ds.SOPInstanceUID)
    if mutate == "other_instance":
        command_instance = str(uid("some other instance"))
    elif mutate == "other_class":
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    elif mutate == "no_study":
        del ds.StudyInstanceUID
    elif mutate == "bad_series":
        ds.SeriesInstanceUID = "1.2.abc"
    payload = b"\xff\xfe garbage, not a data set" * 3 if mutate == "garbage" else encode(ds)
    path = raw_file(tmp_path / "bad.dcm", command_class, command_instance, payload)
    assert send_raw(node, path, monkeypatch) == status
    assert stored_files(node) == [] and temp_files(node) == []
    assert node.index.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0
    assert refusals(node) == [("rejected", status, reason)]


def test_instance_over_size_limit_is_out_of_resources(start_node: Any) -> None:
    node = start_node(max_instance_mb=0)
    assoc = associate(node)
    assert assoc.send_c_store(ct_series(1, 16, 16, seed="big")[0]).Status == 0xA700
    assoc.release()
    assert stored_files(node) == [] and temp_files(node) == []
    assert refusals(node) == [("rejected", 0xA700, "instance_too_large")]


def test_low_disk_is_out_of_resources(start_node: Any) -> None:
    node = start_node(min_free_disk_mb=2**40)
    assoc = associate(node)
    assert assoc.send_c_store(ct_series(1, 16, 16, seed="disk")[0]).Status == 0xA700
    assoc.release()
    assert stored_files(node) == []
    assert refusals(node) == [("rejected", 0xA700, "disk_full")]


def secondary_capture() -> Dataset:
    ds = ct_series(1, 8, 8, seed="sc")[0]
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    return ds


def test_other_storage_is_discarded_by_default(start_node: Any) -> None:
    node = start_node()
    assoc = associate(node, contexts=(CT, SecondaryCaptureImageStorage))
    assert assoc.send_c_store(secondary_capture()).Status == 0x0000
    assoc.release()
    assert stored_files(node) == [] and temp_files(node) == []
    assert refusals(node) == [("discarded", 0, "not_ct")]


def test_other_storage_context_is_refused_by_reject_policy(start_node: Any) -> None:
    node = start_node(other_storage="reject")
    assoc = associate(node, contexts=(CT, SecondaryCaptureImageStorage))
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    assert accepted == {CT}
    with pytest.raises(ValueError):
        assoc.send_c_store(secondary_capture())
    assoc.release()


def test_calling_ae_allowlist_and_address_binding(start_node: Any) -> None:
    node = start_node(
        allowed_callers=(
            AllowedCaller("REMOTE", "10.0.0.0/8"),
            AllowedCaller("LOCAL", "127.0.0.0/8"),
        )
    )
    assert associate(node, calling="STRANGER").is_rejected
    assert associate(node, calling="REMOTE").is_rejected
    assoc = associate(node, calling="LOCAL")
    assert assoc.is_established
    assoc.release()


def test_every_rejection_reaches_the_requestor(start_node: Any) -> None:
    """pynetdicom alone reports some fast rejections as aborts (30 of 300 here): the
    requestor must still know it was rejected, and why (the sender fails such a delivery
    rather than retrying it forever)."""
    node = start_node()
    for _ in range(60):
        assoc = associate(node, called="SOMEONE")
        assert assoc.is_rejected and not assoc.is_established
        assert assoc.rejection == Rejection(result=1, source=1, reason=7)


def test_called_ae_title_must_match(start_node: Any) -> None:
    assert associate(start_node(), called="SOMEONE").is_rejected
    assoc = associate(start_node(require_called_ae_title=False), called="SOMEONE")
    assert assoc.is_established
    assoc.release()


def test_a_second_node_on_a_served_port_fails_to_start(tmp_path: Path) -> None:
    """Two nodes of one user on one port would split its associations between their
    settings and data directories: the second must not start."""
    indexes = [Index(tmp_path / "a"), Index(tmp_path / "b")]
    first = StorageSCP(make_settings(tmp_path).scp, Spool(tmp_path / "a"), indexes[0])
    first.start()
    try:
        settings = dataclasses.replace(make_settings(tmp_path).scp, port=first.port)
        second = StorageSCP(settings, Spool(tmp_path / "b"), indexes[1])
        with pytest.raises(OSError):
            second.start()
    finally:
        first.stop()
        for index in indexes:
            index.close()


def test_association_limit(start_node: Any) -> None:
    node = start_node(max_associations=1)
    first = associate(node)
    assert first.is_established
    second = associate(node)
    assert second.is_rejected
    first.release()


@pytest.mark.parametrize("ending", ["abort", "drop"])
def test_transfer_cut_mid_data_set_leaves_nothing(start_node: Any, ending: str) -> None:
    node = start_node()
    ds = ct_series(1, 64, 64, seed="cut")[0]
    assoc = associate(node)
    context_id = assoc.accepted_contexts[0].context_id
    assert context_id is not None
    raw = assoc.dul.socket.socket
    assert raw is not None
    command = peer.store_command(str(ds.SOPInstanceUID))
    half = encode(ds)[:4000]
    raw.sendall(
        peer.p_data(peer.pdv(context_id, 0x03, command))
        + peer.p_data(peer.pdv(context_id, 0x00, half))
    )
    deadline = time.monotonic() + 5
    while not temp_files(node) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert temp_files(node), "the SCP should be receiving into a temp file"
    if ending == "abort":
        assoc.abort()
    else:
        raw.shutdown(socket.SHUT_RDWR)
        raw.close()
        assoc.kill()
    deadline = time.monotonic() + 10
    while temp_files(node) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert temp_files(node) == [] and stored_files(node) == []
    assert node.index.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0
    # and the node keeps serving
    again = associate(node)
    assert again.send_c_store(ds).Status == 0
    again.release()


def test_tls(start_node: Any, tls_files: dict[str, Path]) -> None:
    tls = config.TLSSettings(
        enabled=True, certificate=str(tls_files["cert"]), private_key=str(tls_files["key"])
    )
    node = start_node(tls=tls)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls_files["ca"]))
    assoc = associate(node, tls_args=(client, "localhost"))
    assert assoc.is_established
    assert assoc.send_c_store(ct_series(1, 8, 8, seed="tls")[0]).Status == 0
    assoc.release()
    assert len(stored_files(node)) == 1
    plain = associate(node)
    assert not plain.is_established


def _after_meta(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(132)
        length = int.from_bytes(fh.read(12)[8:12], "little")
        fh.seek(132 + 12 + length)
        return fh.read()


def test_every_transfer_syntax_is_stored_byte_exact(
    start_node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slice in 15 transfer syntaxes (and the NEMA/fragmented extras) sent raw in its own
    syntax: the stored data set bytes are the source file's, whatever the encoding, even the
    retired JPEG processes the analysis cannot decode."""
    folder = testdata("ct-slice-transfer-syntaxes")
    node = start_node()
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    seen = set()
    for path in sorted(folder.iterdir()):
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="CTNODE")
        assert assoc.is_established, path.name
        assert assoc.send_c_store(path).Status == 0, path.name
        assoc.release()
        row = node.index.query(
            "SELECT path, transfer_syntax, sha256 FROM instances WHERE sop_instance_uid = ?",
            (str(meta.MediaStorageSOPInstanceUID),),
        )[0]
        assert row["transfer_syntax"] == meta.TransferSyntaxUID
        stored = _after_meta(node.spool.path(row["path"]))
        assert stored == _after_meta(path), path.name
        assert row["sha256"] == hashlib.sha256(stored).hexdigest(), path.name
        seen.add(str(meta.TransferSyntaxUID))
    assert len(seen) >= 15


def test_stalled_message_is_aborted_after_the_dimse_timeout(start_node: Any) -> None:
    node = start_node(dimse_timeout=1.0, network_timeout=60.0)
    ds = ct_series(1, 64, 64, seed="stall")[0]
    assoc = associate(node)
    context_id = assoc.accepted_contexts[0].context_id
    assert context_id is not None
    raw = assoc.dul.socket.socket
    assert raw is not None
    command = peer.store_command(str(ds.SOPInstanceUID))
    raw.sendall(
        peer.p_data(peer.pdv(context_id, 0x03, command))
        + peer.p_data(peer.pdv(context_id, 0x00, encode(ds)[:4000]))
    )
    started = time.monotonic()
    deadline = started + 20
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established, "the stalled association must be aborted"
    assert time.monotonic() - started < 10  # dimse_timeout, not the 60 s network timeout
    deadline = time.monotonic() + 5
    while temp_files(node) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert temp_files(node) == [] and stored_files(node) == []


def _send_concurrently(node: Node, groups: list[list[Dataset]]) -> list[list[int]]:
    """One association per group, all established before any sends, then sending at once."""
    barrier = threading.Barrier(len(groups))
    statuses: list[list[int]] = [[] for _ in groups]

    def send(k: int) -> None:
        assoc = associate(node, calling=f"SCU{k}")
        assert assoc.is_established
        barrier.wait(10)
        statuses[k] = [int(assoc.send_c_store(ds).Status) for ds in groups[k]]
        assoc.release()

    threads = [threading.Thread(target=send, args=(k,)) for k in range(len(groups))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return statuses


def _slow_commits(node: Node, monkeypatch: pytest.MonkeyPatch, pause: float) -> list[int]:
    """Pause the node's index before each group commit (so concurrent instances pile up
    behind it); the sizes of the transactions it then commits."""
    sizes: list[int] = []
    record_many = node.index.record_many

    def slowed(instances: Any) -> None:
        time.sleep(pause)
        sizes.append(len(instances))
        record_many(instances)

    monkeypatch.setattr(node.index, "record_many", slowed)
    return sizes


def test_concurrent_associations_share_commits_and_all_succeed(
    start_node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = start_node()
    sizes = _slow_commits(node, monkeypatch, 0.05)
    series = ct_series(24, 16, 16, seed="concurrent")
    statuses = _send_concurrently(node, [series[k::4] for k in range(4)])
    assert statuses == [[0] * 6] * 4
    assert sum(sizes) == 24 and max(sizes) > 1  # some transactions held several instances
    files = stored_files(node)
    assert len(files) == 24 and temp_files(node) == []
    rows = node.index.query("SELECT path, sha256 FROM instances")
    assert len(rows) == 24
    for row in rows:
        data = _after_meta(node.spool.path(row["path"]))
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
    assert node.index.query("SELECT instance_count, revision FROM series") == [
        {"instance_count": 24, "revision": 24}
    ]


def test_failed_shared_commit_answers_out_of_resources_to_each_and_stores_nothing(
    start_node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = start_node()
    sizes = _slow_commits(node, monkeypatch, 0.2)
    node.index.conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON instances BEGIN SELECT RAISE(ABORT, 'full'); END"
    )
    series = ct_series(3, 16, 16, seed="shared failure")
    statuses = _send_concurrently(node, [[ds] for ds in series])
    assert statuses == [[0xA700]] * 3
    assert max(sizes) > 1  # the failure hit a transaction shared by several associations
    assert stored_files(node) == [] and temp_files(node) == []
    for table in ("instances", "series", "studies", "patients"):
        assert node.index.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"] == 0, table
    node.index.conn.execute("DROP TRIGGER refuse")
    assert _send_concurrently(node, [[ds] for ds in series]) == [[0]] * 3
    assert len(stored_files(node)) == 3
