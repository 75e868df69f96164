"""Black box: ``ctnode serve`` as a subprocess, DCMTK's storescu pushing the real chest CTs.

Asserts the protocol result (storescu succeeds) and the side effects: every file in the
store with the very bytes that were sent, one series per CT, STABLE after the stable age,
and, across a ``kill -9``, no acknowledged instance lost or damaged.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest

from tests.conftest import testdata
from tests.node_process import NodeProcess, require, storescp_capture


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the File Meta Information (the data set as sent on the wire)."""
    with open(path, "rb") as fh:
        fh.seek(128 + 4)
        group_length_element = fh.read(12)
        length = int.from_bytes(group_length_element[8:12], "little")
        fh.seek(128 + 4 + 12 + length)
        return fh.read()


def sop_uid(path: Path) -> str:
    return str(
        pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
        ).SOPInstanceUID
    )


def stored_by_uid(node: NodeProcess) -> dict[str, Path]:
    status = node.ctnode("status", "--json")
    assert status.returncode == 0
    return {sop_uid(p): p for p in (node.data_dir / "store").rglob("*.dcm")}


def wait_for(predicate, timeout: float, message: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(message)


def test_real_chest_cts_arrive_intact_and_become_stable(tmp_path: Path) -> None:
    require("storescu")
    folders = [testdata("chest-ct-100-lung"), testdata("chest-ct-248-pneumonia-jpegll")]
    stable_age = 3.0
    node = NodeProcess(
        tmp_path / "var",
        ASSEMBLY__STABLE_AGE=str(stable_age),
        ASSEMBLY__TICK="0.25",
        WORKER__COUNT="0",
    ).start()
    try:
        sources = {sop_uid(p): p for folder in folders for p in sorted(folder.glob("*.dcm"))}
        for folder in folders:
            node.storescu(sorted(folder.glob("*.dcm")))
        pushed = time.monotonic()
        running = node.status()  # works while the node runs
        assert sum(s["instance_count"] for s in running["series"]) == 348

        stored = stored_by_uid(node)
        assert set(stored) == set(sources)
        wire = storescp_capture(list(sources.values()), tmp_path / "wire")
        assert set(wire) == set(sources)
        for uid in sources:
            assert dataset_bytes(stored[uid]) == dataset_bytes(wire[uid])
        for uid in list(sources)[::25]:
            assert pydicom.dcmread(stored[uid]) == pydicom.dcmread(sources[uid])

        wait_for(
            lambda: all(s["state"] == "STABLE" for s in node.status()["series"]),
            stable_age + 15,
            "series did not become STABLE",
        )
        assert time.monotonic() - pushed >= stable_age - 0.5
        final = node.status()
        assert sorted(s["instance_count"] for s in final["series"]) == [100, 248]
        assert final["jobs"] == {"queued": 2}
        text = node.ctnode("status").stdout
        assert "STABLE" in text and "2 studies, 2 series" in text
    finally:
        assert node.stop() == 0
    log = node.log_text()
    assert "association accepted" in log and "STABLE" in log
    for source in (folders[0] / "1-001.dcm", folders[1] / "1-001.dcm"):
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        for phi in (str(ds.PatientName), str(ds.PatientID), str(ds.StudyDate)):
            assert phi not in log, "patient attributes must never reach the log"
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert str(uid) not in log, "UIDs are hashed in logs"


def test_two_receiving_processes_share_the_port_and_one_index(tmp_path: Path) -> None:
    """``scp.processes = 2``: a second process listens on the same port (SO_REUSEPORT), the
    kernel spreads four concurrent associations over both, and every instance is indexed
    once in the one database."""
    require("storescu")
    files = sorted(testdata("chest-ct-100-lung").glob("*.dcm"))
    node = NodeProcess(tmp_path / "var", SCP__PROCESSES="2", WORKER__COUNT="0").start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(node.storescu, [files[i::4] for i in range(4)]))
        assert all(r.returncode == 0 for r in results)
        assert [s["instance_count"] for s in node.status()["series"]] == [len(files)]
        stored = stored_by_uid(node)
        assert set(stored) == {sop_uid(p) for p in files}
        assert len(list((node.data_dir / "store").rglob("*.dcm"))) == len(files)
    finally:
        assert node.stop() == 0
    log = node.log_text()
    assert "receiving process failed" not in log
    assert log.count("association accepted") == 4


def test_kill_9_mid_transfer_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    require("storescu")
    files = sorted(testdata("chest-ct-248-pneumonia-jpegll").glob("*.dcm"))
    node = NodeProcess(
        tmp_path / "var", ASSEMBLY__STABLE_AGE="2", ASSEMBLY__TICK="0.25", WORKER__COUNT="0"
    )
    node.start()

    sender = subprocess.Popen(
        ["storescu", "-v", "-xs", "-aec", "CTNODE", "127.0.0.1", str(node.port), *map(str, files)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    store = node.data_dir / "store"
    wait_for(lambda: sum(1 for _ in store.rglob("*.dcm")) >= 60, 120, "transfer did not start")
    node.kill()
    output, _ = sender.communicate(timeout=60)
    acknowledged = _acknowledged_files(output)
    assert 60 <= len(acknowledged) < len(files), "the kill should land mid-transfer"

    node.start()
    try:
        stored = stored_by_uid(node)
        wire = storescp_capture(files, tmp_path / "wire")
        for path in acknowledged:
            uid = sop_uid(path)
            assert uid in stored, "an acknowledged instance was lost"
            assert dataset_bytes(stored[uid]) == dataset_bytes(wire[uid])
        assert list((node.data_dir / "tmp").iterdir()) == []
        node.storescu(files)
        wait_for(
            lambda: [s["state"] for s in node.status()["series"]] == ["STABLE"],
            30,
            "series did not complete",
        )
        assert node.status()["series"][0]["instance_count"] == len(files)
        stored = stored_by_uid(node)
        assert all(dataset_bytes(stored[uid]) == dataset_bytes(wire[uid]) for uid in wire)
    finally:
        assert node.stop() == 0


def _acknowledged_files(storescu_log: str) -> list[Path]:
    """Files storescu saw a Success response for (its -v log: "Sending file: X" is followed
    by "Received Store Response (Success)")."""
    acknowledged, current = [], None
    for line in storescu_log.splitlines():
        if "Sending file:" in line:
            current = Path(line.split("Sending file:", 1)[1].strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acknowledged.append(current)
            current = None
    return acknowledged


@pytest.mark.parametrize("signal_name", ["SIGTERM"])
def test_sigterm_exits_zero(tmp_path: Path, signal_name: str) -> None:
    node = NodeProcess(tmp_path / "var").start()
    assert node.stop() == 0
    assert "stopped" in node.log_text()
