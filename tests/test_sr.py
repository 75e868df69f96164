"""TID 1500 SR from a realistic Analysis: dciodvfy-clean, dsrdump-parsable, complete tree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from inference import codes
from inference.findings import (
    Analysis,
)
from inference.loading import load_series
from inference.volume import Volume
from reporting.sr import build_sr
from tests.factory import ct_series, write_series
from tests.reporting_factory import make_analysis


def _series(tmp: Path, **kwargs: object) -> tuple[list[Dataset], Volume]:
    datasets = ct_series(**kwargs)  # type: ignore[arg-type]
    paths = write_series(datasets, tmp)
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths], load_series(paths)


def dciodvfy(path: Path) -> list[str]:
    """Error lines from dciodvfy (warnings are returned separately by the caller if needed)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def dciodvfy_warnings(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Warning")]


def _walk(items: object) -> list[Dataset]:
    found: list[Dataset] = []
    for item in items:  # type: ignore[attr-defined]
        found.append(item)
        if "ContentSequence" in item:
            found.extend(_walk(item.ContentSequence))
    return found


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Analysis, Volume]:
    tmp = tmp_path_factory.mktemp("sr")
    sources, volume = _series(tmp / "src")
    analysis = make_analysis(volume)
    sr = build_sr(analysis, volume, sources)
    path = tmp / "report.sr.dcm"
    sr.save_as(path)
    return path, analysis, volume


def test_sr_passes_dciodvfy(written: tuple[Path, Analysis, Volume]) -> None:
    path, _, _ = written
    assert dciodvfy(path) == []
    # The only accepted warning: dciodvfy does not know the private coding scheme 99CTNODE
    # (PS3.16 section 8: "99" prefix = private), declared in CodingSchemeIdentificationSequence;
    # it names scores and measurements that have no standard code.
    unexpected = [w for w in dciodvfy_warnings(path) if "<99CTNODE>" not in w]
    assert unexpected == []


def test_dsrdump_parses_sr(written: tuple[Path, Analysis, Volume]) -> None:
    path, _, _ = written
    if shutil.which("dsrdump") is None:
        pytest.skip("dsrdump (dcmtk) not installed")
    out = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "Imaging Measurement Report" in out.stdout
    assert "SCOORD3D" in out.stdout


def test_sr_tree_has_every_finding(written: tuple[Path, Analysis, Volume]) -> None:
    path, analysis, volume = written
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == volume.study_uid
    assert ds.SeriesInstanceUID != volume.series_uid
    assert ds.CompletionFlag == "PARTIAL"
    assert ds.VerificationFlag == "UNVERIFIED"
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == volume.series_uid
    assert len(evidence.ReferencedSOPSequence) == len(volume.slices)
    items = _walk(ds.ContentSequence)
    meanings = [
        i.ConceptNameCodeSequence[0].CodeMeaning for i in items if "ConceptNameCodeSequence" in i
    ]
    assert "Language of Content Item and Descendants" in meanings
    assert "Device Observer UID" in meanings
    assert "Procedure reported" in meanings
    assert "Image Library" in meanings
    nums = [i for i in items if i.ValueType == "NUM"]
    got = {
        (
            i.ConceptNameCodeSequence[0].CodeMeaning,
            round(float(i.MeasuredValueSequence[0].NumericValue), 3),
            i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue,
        )
        for i in nums
    }
    for finding in analysis.findings:
        for m in finding.measurements:
            assert (codes.measurement(m.name).code.meaning, round(m.value, 3), m.unit) in got
        if finding.score is not None:
            unit = "{probability}" if finding.calibrated else "{score}"
            assert any(v == round(finding.score, 3) and u == unit for _, v, u in got)
    # the lung volumes (both, left, right) and the mean density; no unitless "1"
    volumes = {v for name, v, u in got if name == "Volume" and u == "mL"}
    assert {4100.0, 1900.0, 2200.0} <= volumes
    assert ("Mean Attenuation Coefficient", -820.0, "[hnsf'U]") in got
    assert all(u != "1" for _, _, u in got)
    # a NUM carries no algorithm identification: that is once per group (TID 4019)
    assert not any(
        c.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Name"
        for i in nums
        for c in i.get("ContentSequence", [])
    )
    trackers = [
        i.TextValue
        for i in items
        if i.ValueType == "TEXT"
        and i.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier"
    ]
    tracking_uids = [
        i.UID
        for i in items
        if i.ValueType == "UIDREF"
        and i.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Unique Identifier"
    ]
    # one group per finding and per lung region (both, left, right), each drawn on an image
    assert len(trackers) == len(analysis.findings) + 3 == len(set(trackers))
    assert len(tracking_uids) == len(set(tracking_uids)) == len(trackers)
    scoords = [i for i in items if i.ValueType == "SCOORD3D"]
    assert len(scoords) == 1
    assert scoords[0].ReferencedFrameOfReferenceUID == volume.frame_of_reference_uid
    nodule = next(f for f in analysis.findings if f.location is not None)
    location = nodule.location
    assert location is not None
    assert np.allclose([float(v) for v in scoords[0].GraphicData], location, atol=1e-3)
    circles = [i for i in items if i.ValueType == "SCOORD" and i.GraphicType == "CIRCLE"]
    assert len(circles) == 1
    image = circles[0].ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert image == volume.slices[nodule.key_slice or 0].sop_instance_uid
    centre, edge = np.array(circles[0].GraphicData, dtype=float).reshape(2, 2)
    assert np.linalg.norm(edge - centre) * volume.spacing[2] == pytest.approx(7.5 / 2, rel=1e-3)
    values = [i.ConceptCodeSequence[0].CodeMeaning for i in items if i.ValueType == "CODE"]
    assert "Present" in values and "Absent" in values
    assert "Left" in values and "Upper zone of lung" in values
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert any(t.startswith("Pathology suspected: 0.83") for t in texts)
    params = [
        i.TextValue
        for i in items
        if i.ValueType == "TEXT"
        and i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"
    ]
    assert "weights_sha256=" + "ab" * 32 in params
    versions = [
        i.TextValue
        for i in items
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Version"
    ]
    assert {"1.2.0", "0.3.1"} <= set(versions)


def test_sr_is_deterministic(tmp_path: Path, written: tuple[Path, Analysis, Volume]) -> None:
    path, analysis, volume = written
    sources = [
        pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((path.parent / "src").iterdir())
    ]
    again = build_sr(analysis, volume, sources)
    first = pydicom.dcmread(path)
    assert again.SOPInstanceUID == first.SOPInstanceUID
    assert again.SeriesInstanceUID == first.SeriesInstanceUID
    a = [i.get("UID") for i in _walk(again.ContentSequence)]
    b = [i.get("UID") for i in _walk(first.ContentSequence)]
    assert a == b


@pytest.mark.parametrize("patient_name", ["", "Müller^Jürgen=山田^太郎", "ANON^"])
def test_sr_robust_to_patient_attributes(tmp_path: Path, patient_name: str) -> None:
    datasets = ct_series(
        n_slices=300 if patient_name == "ANON^" else 24,
        rows=16,
        columns=16,
        patient_name=patient_name,
        seed=patient_name or "empty",
    )
    for ds in datasets:
        for keyword in ("PatientBirthDate", "PatientSex"):
            if keyword in ds:
                delattr(ds, keyword)
        if patient_name != "ANON^" and patient_name:
            ds.SpecificCharacterSet = "ISO_IR 192"
    paths = write_series(datasets, tmp_path / "src")
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    volume = load_series(paths)
    sr = build_sr(make_analysis(volume), volume, sources)
    out = tmp_path / "report.sr.dcm"
    sr.save_as(out)
    assert dciodvfy(out) == []
    back = pydicom.dcmread(out)
    assert str(back.PatientName) == patient_name


def test_new_version_names_the_report_it_supersedes(
    written: tuple[Path, Analysis, Volume], tmp_path: Path
) -> None:
    """A series that changed after its report: the new SR (new UIDs, since the instance set
    differs) lists the old one in its Predecessor Documents Sequence and stays valid."""
    old_path, _, _ = written
    old = pydicom.dcmread(old_path)
    sources, volume = _series(tmp_path / "src", n_slices=25)  # one more slice arrived
    new = build_sr(make_analysis(volume), volume, sources, previous=[old])
    assert new.SOPInstanceUID != old.SOPInstanceUID
    predecessor = new.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old.SOPInstanceUID
    path = tmp_path / "new.sr.dcm"
    new.save_as(path)
    assert dciodvfy(path) == []
