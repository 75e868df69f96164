"""Legacy JSON: exact legacy fields, per-analyzer results, report UIDs, failure shape."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom

from inference.loading import load_series
from reporting import write_outputs
from reporting.legacy_json import LEGACY_FIELDS, failure
from tests.factory import ct_series, write_series
from tests.reporting_factory import make_analysis


def test_write_outputs_json_and_sr(tmp_path: Path) -> None:
    paths = write_series(ct_series(rows=16, columns=16), tmp_path / "src")
    volume = load_series(paths)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    analysis = make_analysis(volume)
    files = write_outputs(analysis, volume, sources, tmp_path / "out", time_of_processing=1.25)
    result = json.loads(files.json.read_text(encoding="utf-8"))
    assert list(result)[: len(LEGACY_FIELDS)] == list(LEGACY_FIELDS)
    assert result["processing_status"] == "Success"
    assert result["error"] is None
    assert result["pathology"] == 1
    assert result["probability_of_pathology"] == 0.83
    assert result["most_dangerous_pathology_type"] == "Lung nodule"
    assert result["study_uid"] == volume.study_uid and result["series_uid"] == volume.series_uid
    assert [a["analyzer"] for a in result["analyzers"]] == ["density", "nodule-candidates"]
    assert result["analyzers"][1]["weights_sha256"] == ["ab" * 32, "cd" * 32]
    sr = pydicom.dcmread(files.sr)
    assert result["report_sop_instance_uids"]["sr"] == sr.SOPInstanceUID
    assert result["report_sop_instance_uids"]["sc"] == [
        pydicom.dcmread(p).SOPInstanceUID for p in files.sc
    ]
    assert len(files.sc) == 2  # summary + one key image (both present findings share a slice)
    again = write_outputs(analysis, volume, sources, tmp_path / "out2", time_of_processing=1.25)
    assert again.json.read_text(encoding="utf-8") == files.json.read_text(encoding="utf-8")


def test_failure_shape() -> None:
    result = failure("1.2.3", "1.2.3.4", "no lungs found", time_of_processing=0.5)
    assert result["processing_status"] == "Failure"
    assert result["error"] == "no lungs found"
    for key in ("probability_of_pathology", "pathology", "most_dangerous_pathology_type"):
        assert result[key] is None
    assert list(result)[: len(LEGACY_FIELDS)] == list(LEGACY_FIELDS)
