"""The worker's analysis pipeline on synthetic studies: a study with nothing to analyse
sends nothing by default and, when the site asks for it, one valid "not analysed" page,
written once per study and reproducibly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom

from config import Settings
from config.settings import WorkerSettings
from node.pipeline import AnalysisPipeline
from node.worker import AnalysisRequest
from tests.conftest import REPO, subprocess_env
from tests.factory import ct_series, write_series
from tests.test_sr import dciodvfy


def short_study(tmp_path: Path) -> tuple[str, tuple[Path, ...]]:
    files = write_series(ct_series(10, 32, 32, seed="pipeline-short"), tmp_path / "in")
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    return series_uid, tuple(files)


def test_nothing_is_sent_for_an_invalid_study_by_default(tmp_path: Path) -> None:
    series_uid, files = short_study(tmp_path)
    result = AnalysisPipeline(Settings())(AnalysisRequest(series_uid, files), tmp_path / "out")
    assert result.invalid_reason is not None
    assert result.invalid_reason.startswith("too_few_slices")
    assert result.objects == ()
    assert result.result["processing_status"] == "Failure"


def test_not_analysed_page_when_configured(tmp_path: Path) -> None:
    series_uid, files = short_study(tmp_path)
    pipeline = AnalysisPipeline(Settings(worker=WorkerSettings(report_not_analysed=True)))
    first = pipeline(AnalysisRequest(series_uid, files), tmp_path / "a")
    again = pipeline(AnalysisRequest(series_uid, files), tmp_path / "b")
    (page,) = first.objects
    assert page.kind == "sc" and page.sop_instance_uid == again.objects[0].sop_instance_uid
    ds = pydicom.dcmread(page.path)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.PatientID == source.PatientID
    assert ds.BurnedInAnnotation == "YES"
    assert np.asarray(ds.pixel_array).max() > 0  # the text is drawn
    assert dciodvfy(page.path) == []


def test_a_node_without_neural_weights_never_imports_torch() -> None:
    """torch costs ~180 MB per process and is an optional extra: only a registered neural
    model may bring it in."""
    code = (
        "import sys; from config import Settings; from node.pipeline import AnalysisPipeline; "
        "AnalysisPipeline(Settings()); print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=subprocess_env(CTNODE_NEURAL__WEIGHTS_DIR=str(REPO / "weights")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
