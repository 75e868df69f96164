"""The Orthanc harness itself: Orthanc starts, takes an upload over REST, and C-STOREs it to
a DICOM peer (ctnode) that stores it. Issue 6's end-to-end test builds on this."""

from __future__ import annotations

from pathlib import Path

from tests.factory import ct_series, write_series
from tests.node_process import NodeProcess
from tests.orthanc import Orthanc


def test_orthanc_sends_a_study_to_ctnode(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "var", ASSEMBLY__STABLE_AGE="1", ASSEMBLY__TICK="0.25")
    orthanc = Orthanc(tmp_path / "orthanc", {"ctnode": ("CTNODE", "127.0.0.1", node.port)})
    node.start()
    orthanc.start()
    try:
        files = write_series(ct_series(4, 16, 16, seed="orthanc"), tmp_path / "series")
        (study,) = orthanc.upload(files)
        assert len(orthanc.get(f"/studies/{study}/instances")) == 4
        orthanc.send_study(study, "ctnode")
        status = node.status()
        assert [s["instance_count"] for s in status["series"]] == [4]
    finally:
        orthanc.stop()
        node.stop()
