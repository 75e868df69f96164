"""Black box against Orthanc (Debian package ``orthanc``) as the PACS: Orthanc knows ctnode
as a modality and ctnode has Orthanc as its destination. The real pneumonia CT (JPEG
lossless) is uploaded to Orthanc over REST and sent to ctnode through Orthanc's REST API;
the SR and secondary captures come back into the same Orthanc study, as Orthanc's REST API
shows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import testdata
from tests.node_process import NodeProcess
from tests.orthanc import Orthanc

pytestmark = pytest.mark.slow


def test_a_study_sent_from_orthanc_comes_back_with_its_report(tmp_path: Path) -> None:
    files = sorted(testdata("chest-ct-248-pneumonia-jpegll").glob("*.dcm"))
    node = NodeProcess(
        tmp_path / "var",
        ASSEMBLY__STABLE_AGE="1",
        ASSEMBLY__TICK="0.25",
        WORKER__POLL="0.25",
        OUTBOX__TICK="0.5",
    )
    orthanc = Orthanc(tmp_path / "orthanc", {"ctnode": ("CTNODE", "127.0.0.1", node.port)})
    destination = {
        "name": "orthanc",
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
        "ae_title": orthanc.ae_title,
    }
    node.env["CTNODE_DESTINATIONS"] = json.dumps([destination])
    orthanc.start()
    node.start()
    try:
        (study,) = orthanc.upload(files)
        orthanc.send_study(study, "ctnode")
        assert [s["instance_count"] for s in node.status()["series"]] == [len(files)]

        deadline = time.monotonic() + 240
        modalities: dict[str, int] = {}
        while time.monotonic() < deadline:
            series = [
                orthanc.get(f"/series/{s}") for s in orthanc.get(f"/studies/{study}")["Series"]
            ]
            modalities = {}
            for s in series:
                modality = s["MainDicomTags"].get("Modality", "")
                modalities[modality] = modalities.get(modality, 0) + len(s["Instances"])
            sent = node.status()["series"][0]["state"] == "SENT"
            if sent and "SR" in modalities and modalities.get("OT", 0) >= 2:
                break
            time.sleep(1)
        assert modalities.get("SR") == 1, modalities  # one report, in the source study
        assert len(orthanc.get("/studies")) == 1  # nothing landed in a study of its own
        assert modalities.get("OT", 0) >= 2, modalities  # summary page and key images (SC)
        assert modalities["CT"] == len(files)
    finally:
        node.stop()
        orthanc.stop()
