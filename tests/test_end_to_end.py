"""The whole loop, black box: each real chest CT pushed to ``ctnode serve`` with storescu comes
back to the PACS (DCMTK storescp) as an SR and secondary captures in the same study, referencing
the analysed series, valid for dciodvfy, and the series ends SENT."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from tests.conftest import testdata
from tests.node_process import NodeProcess, Pacs, require

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASSES = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4"}


@pytest.mark.parametrize("ct", ["chest-ct-100-lung", "chest-ct-248-pneumonia-jpegll"])
def test_results_come_back_to_the_pacs(tmp_path: Path, ct: str) -> None:
    require("storescu", "dciodvfy")
    pacs = Pacs(tmp_path / "pacs")
    node = NodeProcess(
        tmp_path / "var",
        ASSEMBLY__STABLE_AGE="1",
        ASSEMBLY__TICK="0.25",
        WORKER__POLL="0.25",
        OUTBOX__TICK="0.5",
        DESTINATIONS=json.dumps([pacs.destination]),
    )
    try:
        pacs.start()
        node.start()
        sources = sorted(testdata(ct).glob("*.dcm"))
        node.storescu(sources)
        source = pydicom.dcmread(sources[0], stop_before_pixels=True)

        deadline = time.monotonic() + 240
        received: dict[str, list[pydicom.Dataset]] = {}
        while time.monotonic() < deadline:
            # State first: once SENT, every object was acknowledged, so written in full.
            states = [s["state"] for s in node.status()["series"]]
            received = pacs.received()
            if SR_CLASS in received and states == ["SENT"]:
                break
            time.sleep(1)
        assert SR_CLASS in received, f"no SR at the PACS: {sorted(received)}"
        (sr,) = received[SR_CLASS]
        scs = [ds for uid in SC_CLASSES for ds in received.get(uid, [])]
        assert len(scs) >= 2  # summary page and at least one key image
        for result in (sr, *scs):
            assert result.StudyInstanceUID == source.StudyInstanceUID
            assert result.PatientID == source.PatientID
            assert result.SeriesInstanceUID != source.SeriesInstanceUID
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
        assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        assert sr.VerificationFlag == "UNVERIFIED"
        assert all(ds.BurnedInAnnotation == "YES" for ds in scs)
        check = subprocess.run(["dciodvfy", sr.filename], capture_output=True, text=True)
        errors = [
            line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")
        ]
        assert errors == []
        assert node.status()["series"][0]["state"] == "SENT"
        assert node.status()["pending_deliveries"] == 0
    finally:
        if node.proc is not None:
            node.stop()
        pacs.stop()
