"""Black box: the node analyses what it receives, study by study. A chest CT pushed with
storescu ends REPORTED and its results reach the PACS; a soft-kernel reconstruction of the
same study is NOT_SELECTED (the lung kernel is preferred) and is not reported twice; a head
CT, a 10-slice series and a localizer-only study end INVALID with their reasons, send
nothing, and the node goes on serving."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pydicom

from tests.conftest import testdata
from tests.factory import ct_series, uid, write_series
from tests.node_process import NodeProcess, Pacs, require

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
FINAL = ("REPORTED", "SENT", "INVALID", "NOT_SELECTED", "FAILED")


def wait_for_states(node: NodeProcess, expected: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        series: list[dict[str, Any]] = node.status()["series"]
        if len([s for s in series if s["state"] in FINAL]) >= expected:
            return series
        time.sleep(0.5)
    raise AssertionError(f"series not analysed in time: {node.status()['series']}")


def soft_kernel_copy(sources: list[Path], folder: Path) -> list[Path]:
    """The same images as a second, soft-kernel series of the same study."""
    folder.mkdir()
    series_uid = uid("soft-copy", "series")
    copies = []
    for k, path in enumerate(sources):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = uid("soft-copy", ds.SOPInstanceUID)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ConvolutionKernel = "STANDARD"
        ds.SeriesNumber = 90
        ds.SeriesDescription = "soft copy"
        copies.append(folder / f"{k:03d}.dcm")
        ds.save_as(copies[-1], enforce_file_format=True)
    return copies


def test_node_selects_per_study_and_refuses_bad_series(tmp_path: Path) -> None:
    require("storescu", "storescp")
    pacs = Pacs(tmp_path / "pacs").start()
    node = NodeProcess(
        tmp_path / "var",
        ASSEMBLY__STABLE_AGE="2",
        ASSEMBLY__TICK="0.25",
        WORKER__POLL="0.25",
        OUTBOX__TICK="0.5",
        DESTINATIONS=json.dumps([pacs.destination]),
    ).start()
    try:
        qa = testdata("dcm_qa_ct") / "In"
        node.storescu(sorted((qa / "GE").glob("*.dcm")))  # head CT
        node.storescu(write_series(ct_series(10, 32, 32, seed="short"), tmp_path / "short"))
        node.storescu(sorted((qa / "Philips" / "S21610" / "S1000").glob("I*")))  # localizer
        chest = sorted(testdata("chest-ct-100-lung").glob("*.dcm"))
        node.storescu(chest + soft_kernel_copy(chest, tmp_path / "soft"))  # one association
        series = wait_for_states(node, 5, timeout=240)
        by_reason = sorted((s["state"], s["reason"].split(":")[0]) for s in series)
        assert [state for state, _ in by_reason].count("INVALID") == 3, by_reason
        reasons = {reason for state, reason in by_reason if state == "INVALID"}
        assert "too_few_slices" in reasons and "localizer_only" in reasons, reasons
        chest_uid = str(pydicom.dcmread(chest[0], stop_before_pixels=True).SeriesInstanceUID)
        states = {s["series_uid"]: s for s in series}
        soft = states[str(uid("soft-copy", "series"))]
        assert soft["state"] == "NOT_SELECTED"
        assert "series 3" in soft["reason"]  # names the series analysed instead
        assert states[chest_uid]["state"] in ("REPORTED", "SENT")

        deadline = time.monotonic() + 60
        while states[chest_uid]["state"] != "SENT" and time.monotonic() < deadline:
            time.sleep(0.5)
            states = {s["series_uid"]: s for s in node.status()["series"]}
        assert states[chest_uid]["state"] == "SENT"
        received = pacs.received()
        (sr,) = received[SR_CLASS]  # one report for the study, from the chest CT only
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
        assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == chest_uid
        studies = {str(ds.StudyInstanceUID) for v in received.values() for ds in v}
        assert len(studies) == 1

        with urllib.request.urlopen(f"http://127.0.0.1:{node.api_port}/jobs") as response:
            jobs = json.loads(response.read())
        job = next(j for j in jobs if j["series_uid"] == chest_uid)
        with urllib.request.urlopen(f"http://127.0.0.1:{node.api_port}/jobs/{job['id']}") as r:
            detail = json.loads(r.read())
        assert detail["result"]["processing_status"] == "Success"
        assert 0 <= detail["result"]["probability_of_pathology"] <= 1
        assert {"load", "analyse", "report", "total"} <= set(detail["timings"])
        assert node.ctnode("echo").returncode == 0  # and it keeps serving
    finally:
        assert node.stop() == 0
        pacs.stop()
