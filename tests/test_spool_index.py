"""The durable spool and the SQLite index, and how start-up recovery reconciles them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from node.index import Index, SeriesState
from node.recovery import recover
from scp.sink import ReceivedInstance, StoredCopy
from scp.spool import Spool
from scp.validation import Identity
from tests.factory import ct_series

REPO = Path(__file__).resolve().parent.parent


def test_paths_are_hashes_only(tmp_path: Path) -> None:
    relative = Spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5", "ab" * 32)
    assert "1.2.3" not in relative and ".." not in relative
    study, series, name = relative.split("/")
    assert len(study) == len(series) == 16
    assert name.endswith("-" + "ab" * 6 + ".dcm")
    assert Spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5", "cd" * 32) != relative


def test_place_and_write_atomic(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    temp = spool.tmp_dir / "incoming"
    temp.write_bytes(b"payload")
    final = spool.place(temp, "a/b/c.dcm")
    assert final.read_bytes() == b"payload" and not temp.exists()
    spool.write_atomic("a/b/d.dcm", [b"one", b"two"])
    assert spool.path("a/b/d.dcm").read_bytes() == b"onetwo"
    assert sorted(spool.stored()) == ["a/b/c.dcm", "a/b/d.dcm"]
    assert list(spool.tmp_dir.iterdir()) == []


def test_write_atomic_leaves_nothing_on_failure(tmp_path: Path) -> None:
    spool = Spool(tmp_path)

    def chunks() -> list[bytes]:
        raise OSError("disk gone")

    with pytest.raises(OSError):
        spool.write_atomic("x.dcm", chunks())
    assert list(spool.tmp_dir.iterdir()) == [] and list(spool.stored()) == []


def _received(
    ds: Dataset, relative: str, sha: str, replaces: StoredCopy | None = None
) -> ReceivedInstance:
    identity = Identity(
        ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID
    )
    return ReceivedInstance(
        identity, ds, relative, sha, 1234, "1.2.840.10008.1.2.1", "SCU", replaces
    )


def test_index_records_hierarchy_and_revisions(tmp_path: Path) -> None:
    index = Index(tmp_path)
    series = ct_series(3, 8, 8, seed="idx")
    for k, ds in enumerate(series):
        index.record(_received(ds, f"p{k}", f"{k:064x}"))
    rows = index.query("SELECT * FROM series")
    assert len(rows) == 1
    assert rows[0]["instance_count"] == 3 and rows[0]["revision"] == 3
    assert rows[0]["state"] == SeriesState.RECEIVING
    instance = index.query(
        "SELECT * FROM instances WHERE sop_instance_uid = ?", (str(series[1].SOPInstanceUID),)
    )[0]
    assert instance["convolution_kernel"] == "STANDARD"
    assert instance["rows"] == 8 and instance["calling_ae"] == "SCU"
    assert instance["image_position"].count("\\") == 2
    assert index.stored_copy(str(series[0].SOPInstanceUID)) == StoredCopy(f"{0:064x}", "p0")
    assert index.stored_copy("9.9") is None
    patient = index.query("SELECT * FROM patients")[0]
    assert patient["patient_id"] == "TEST-0001" and "TEST" not in patient["patient_key"]
    # A corrected name arriving with a later instance updates the patient (the upsert
    # writes only when something changed).
    late = ct_series(1, 8, 8, seed="idx-late")[0]
    late.PatientName = "Corrected^Name"
    index.record(_received(late, "p9", f"{9:064x}"))
    names = [row["patient_name"] for row in index.query("SELECT * FROM patients")]
    assert names == ["Corrected^Name"]


def test_mark_stable_queues_one_job_and_respects_revisions(tmp_path: Path) -> None:
    index = Index(tmp_path)
    ds = ct_series(2, 8, 8, seed="stable")
    index.record(_received(ds[0], "p0", "0" * 64))
    uid = str(ds[0].SeriesInstanceUID)
    assert index.mark_stable(uid, revision=0) is None  # stale revision: it changed since
    job = index.mark_stable(uid, revision=1)
    assert job is not None
    assert index.query("SELECT state FROM series")[0]["state"] == SeriesState.STABLE
    assert index.open_series() == []
    # A late instance reopens the series; the next job supersedes the queued one.
    index.record(_received(ds[1], "p1", "1" * 64))
    assert [s.revision for s in index.open_series()] == [2]
    second = index.mark_stable(uid, revision=2)
    states = {r["id"]: r["state"] for r in index.query("SELECT id, state FROM jobs")}
    assert states == {job: "superseded", second: "queued"}


def test_replacing_an_instance_does_not_count_it_twice(tmp_path: Path) -> None:
    index = Index(tmp_path)
    ds = ct_series(1, 8, 8, seed="replace")[0]
    index.record(_received(ds, "old", "a" * 64))
    index.record(_received(ds, "new", "b" * 64, replaces=StoredCopy("a" * 64, "old")))
    row = index.query("SELECT instance_count, revision FROM series")[0]
    assert (row["instance_count"], row["revision"]) == (1, 2)
    assert index.query("SELECT path FROM instances")[0]["path"] == "new"


def test_read_only_index_sees_committed_rows(tmp_path: Path) -> None:
    index = Index(tmp_path)
    index.record(_received(ct_series(1, 8, 8, seed="ro")[0], "p", "c" * 64))
    reader = Index(tmp_path, read_only=True)
    assert reader.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 1
    with pytest.raises(sqlite3.OperationalError):
        reader.conn.execute("DELETE FROM instances")


def test_recovery_removes_temp_and_orphans_and_forgets_missing(tmp_path: Path) -> None:
    spool, index = Spool(tmp_path), Index(tmp_path)
    ds = ct_series(2, 8, 8, seed="recover")
    for k in range(2):
        spool.write_atomic(f"s/{k}.dcm", [b"data"])
        index.record(_received(ds[k], f"s/{k}.dcm", f"{k:064x}"))
    (spool.tmp_dir / "half-received.dcm").write_bytes(b"partial")
    spool.write_atomic("s/orphan.dcm", [b"never acknowledged"])
    os.unlink(spool.path("s/1.dcm"))
    index.mark_stable(str(ds[0].SeriesInstanceUID), 2)

    report = recover(index, spool)

    assert (report.temp_files_removed, report.orphans_removed, report.missing_files) == (1, 1, 1)
    assert sorted(spool.stored()) == ["s/0.dcm"]
    series = index.query("SELECT state, instance_count FROM series")[0]
    assert series == {"state": "RECEIVING", "instance_count": 1}


@pytest.mark.parametrize("fsync", [True, False])
def test_writeback_started_while_receiving_changes_nothing_but_timing(
    tmp_path: Path, fsync: bool
) -> None:
    spool = Spool(tmp_path, fsync=fsync)
    temp = spool.tmp_dir / "incoming"
    with open(temp, "wb", buffering=0) as fh:
        offset = 0
        for chunk in (b"a" * 70000, b"b" * 3, b"c" * 131072):
            written = fh.write(chunk) or 0
            spool.start_writeback(fh.fileno(), offset, written)
            offset += written
    final = spool.place(temp, "x/y.dcm")
    assert final.read_bytes() == b"a" * 70000 + b"b" * 3 + b"c" * 131072


def test_the_index_does_not_load_pandas_into_the_node(tmp_path: Path) -> None:
    """sqlite-utils would import pandas and pyarrow (~95 MB in every serving process)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from node.index import Index\n"
        f"Index(Path({str(tmp_path)!r})).close()\n"
        "assert 'pandas' not in sys.modules and 'pyarrow' not in sys.modules\n"
        "import pandas\n"
        "print(pandas.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pandas"


def test_processes_opening_one_new_index_at_once_all_start(tmp_path: Path) -> None:
    """Several roles started together on one host share one SQLite index: each creates or
    migrates the schema in turn, none fails with "database is locked" (before the schema
    was created in one write transaction, 19 of 90 such starts failed here)."""
    code = "import sys, pathlib, node.index; node.index.Index(pathlib.Path(sys.argv[1]))"
    for trial in range(3):
        data = tmp_path / f"data{trial}"
        starts = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(data)], stderr=subprocess.PIPE, cwd=REPO
            )
            for _ in range(6)
        ]
        errors = [p.communicate(timeout=60)[1].decode() for p in starts]
        assert all(p.returncode == 0 for p in starts), "\n".join(e for e in errors if e)
        assert "jobs" in Index(data).db.table_names()
