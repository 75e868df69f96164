"""Series selection (pure rules) and intake of folders, ZIP archives and DICOMDIRs, safely."""

from __future__ import annotations

import io
import json
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet

from config import SelectionSettings, Settings
from inference.errors import IntakeError
from inference.headers import SliceHeader, headers_of
from inference.intake import open_input
from inference.prepare import prepare
from inference.selection import LUNG, OTHER, SOFT, kernel_class, pick
from tests.conftest import ctnode_command, subprocess_env, testdata
from tests.factory import ct_series, write_series

STUDY = "1.2.826.0.1.3680043.8.498.77"


def series(seed: str, kernel: str, n: int = 24, thickness: float = 2.5, **kw: Any) -> list[Dataset]:
    return ct_series(
        n, 16, 16, seed=seed, kernel=kernel, study_uid=STUDY, slice_spacing=thickness, **kw
    )


def headers(datasets: list[Dataset]) -> list[SliceHeader]:
    return [h for ds in datasets for h in headers_of(ds, Path("/nonexistent"))]


@pytest.mark.parametrize(
    ("kernel", "description", "expected"),
    [
        ("LUNG", "", LUNG),
        ("B70f", "", LUNG),
        ("B60f\\3", "", LUNG),
        ("FC56", "", LUNG),
        ("YA", "", LUNG),
        ("L", "", LUNG),
        ("STANDARD", "", SOFT),
        ("B30f", "", SOFT),
        ("FC08", "", SOFT),
        ("XYZ", "Thorax LUNG 1mm", LUNG),
        ("XYZ", "", OTHER),
        ("LA", "", OTHER),
    ],
)
def test_kernel_classes(kernel: str, description: str, expected: str) -> None:
    assert kernel_class(kernel, description, SelectionSettings()) == expected


def test_lung_kernel_beats_more_slices_and_ties_go_to_thinner() -> None:
    study = {
        "soft": headers(series("soft", "STANDARD", n=60)),
        "lung": headers(series("lung", "B70f", n=30)),
        "lung-thin": headers(series("thin", "B70f", n=30, thickness=1.25)),
        "scout": headers(
            series("scout", "STANDARD", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), n=2)
        ),
    }
    study = {headers_list[0].series_uid: headers_list for headers_list in study.values()}
    selection = pick(study)
    chosen = study[str(selection.chosen)][0]
    assert chosen.kernel == "B70f" and chosen.slice_thickness == 1.25
    verdicts = {f"{v.kernel} {v.slice_thickness} {v.images}": v for v in selection.verdicts}
    assert verdicts["B70f 1.25 30"].reason == "selected"
    assert verdicts["B70f 2.5 30"].reason == "candidate 2: thicker slices"
    assert verdicts["STANDARD 2.5 60"].reason == "candidate 3: less preferred kernel"
    scout = next(v for v in selection.verdicts if v.images == 2)
    assert not scout.valid and scout.reason.startswith("localizer_only")


def test_rules_are_data() -> None:
    study = {
        h[0].series_uid: h
        for h in (headers(series("a", "KX", n=24)), headers(series("b", "STANDARD", n=24)))
    }
    assert study[str(pick(study).chosen)][0].kernel == "STANDARD"
    custom = SelectionSettings(lung_kernels=("KX",), soft_kernels=())
    assert study[str(pick(study, custom).chosen)][0].kernel == "KX"


def test_philips_study_lists_every_series_with_a_reason() -> None:
    (plan,) = prepare(testdata("dcm_qa_ct/In/Philips"))
    assert plan.volume is None and plan.reason_code == "gantry_tilt"
    reasons = sorted(v.reason.split(":")[0] for v in plan.verdicts)
    assert reasons == ["gantry_tilt", "gantry_tilt", "localizer_only", "not_ct"]
    assert any("non-DICOM files skipped" in n for n in plan.notes)


# -- intake ----------------------------------------------------------------------------


def make_zip(
    entries: dict[str, bytes], path: Path, compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_zip_with_nested_folders_two_studies_and_junk(tmp_path: Path) -> None:
    first = ct_series(24, 16, 16, seed="zip1", hu=lambda z, y, x: -1000.0 + 0 * x)
    second = ct_series(22, 16, 16, seed="zip2")
    entries = {f"a/b/{k}": dicom_bytes(ds) for k, ds in enumerate(first)}
    entries |= {f"c/{k}.DCM": dicom_bytes(ds) for k, ds in enumerate(second)}
    entries |= {"README.txt": b"hello", "a/Thumbs.db": b"\0" * 10}
    archive = make_zip(entries, tmp_path / "in.zip")
    before = set(Path(tempfile.gettempdir()).glob("ctnode-intake-*"))
    with open_input(archive) as intake:
        assert len(intake.files) == 46 and intake.skipped == 2
        extracted = intake.files[0].parent
        assert extracted.exists()
    assert not extracted.exists()
    assert set(Path(tempfile.gettempdir()).glob("ctnode-intake-*")) == before
    plans = prepare(archive)
    assert len(plans) == 2
    assert {p.reason_code for p in plans} == {"not_chest"}  # synthetic air boxes, no lungs


@pytest.mark.parametrize(
    "name", ["../evil.dcm", "/etc/evil.dcm", "a/../../evil", "C:/evil", "..\\evil"]
)
def test_path_traversal_is_refused(tmp_path: Path, name: str) -> None:
    archive = make_zip({"ok.dcm": b"x", name: b"y"}, tmp_path / "evil.zip")
    with pytest.raises(IntakeError) as caught, open_input(archive):
        pass
    assert caught.value.code == "path_traversal"
    assert not (tmp_path.parent / "evil.dcm").exists()


def test_zip_bomb_and_size_cap(tmp_path: Path) -> None:
    bomb = make_zip({"zeros": b"\0" * (50 * 2**20)}, tmp_path / "bomb.zip")
    with pytest.raises(IntakeError) as caught, open_input(bomb):
        pass
    assert caught.value.code == "zip_bomb"
    big = make_zip({"noise": bytes(range(256)) * 8192}, tmp_path / "big.zip", zipfile.ZIP_STORED)
    with (
        pytest.raises(IntakeError) as caught,
        open_input(big, Settings().intake.__class__(max_total_mb=1)),
    ):
        pass
    assert caught.value.code == "too_large"


def test_not_an_archive_and_no_dicom(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not dicom")
    with pytest.raises(IntakeError) as caught, open_input(text):
        pass
    assert caught.value.code == "not_dicom"
    empty = make_zip({"a.txt": b"no images here"}, tmp_path / "empty.zip")
    with pytest.raises(IntakeError) as caught, open_input(empty):
        pass
    assert caught.value.code == "no_dicom"


def test_dicomdir_with_files_and_without(tmp_path: Path) -> None:
    media = tmp_path / "media"
    fileset = FileSet()
    for ds in ct_series(20, 16, 16, seed="dicomdir"):
        fileset.add(ds)
    fileset.write(media)
    with open_input(media / "DICOMDIR") as intake:
        assert len(intake.files) == 20
    with pytest.raises(IntakeError) as caught, open_input(testdata("dcm_qa_ct") / "DICOMDIR"):
        pass
    assert caught.value.code == "dicomdir_files_missing"


# -- CLI -------------------------------------------------------------------------------


def analyze(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ctnode_command("analyze", *args),
        env={**subprocess_env(), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    out = tmp_path / "decision.json"
    ok = analyze(str(testdata("chest-ct-100-lung")), "--json", str(out))
    assert ok.returncode == 0, ok.stderr
    result = json.loads(out.read_text())
    decision = result["decision"]
    assert result["reason_code"] is None and decision["volume"]["shape"] == [100, 512, 512]
    assert decision["series"][0]["verdict"] == "selected" and "selected" in ok.stdout
    assert result["processing_status"] == "Success" and result["probability_of_pathology"] >= 0
    assert {f["label"] for f in decision["findings"]} >= {"Emphysema", "Lung opacity"}
    head = analyze(str(testdata("dcm_qa_ct/In/GE")))
    assert head.returncode == 3 and "gantry_tilt" in head.stderr
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 1000)
    bad = analyze(str(junk))
    assert bad.returncode == 2 and "not_dicom" in bad.stderr
    out = tmp_path / "outputs"
    strict = {"CTNODE_FUSION__THRESHOLD": "1.0"}  # only a certainty counts as pathology
    with_outputs = analyze(str(testdata("chest-ct-100-lung")), "--out", str(out), **strict)
    assert with_outputs.returncode == 0, with_outputs.stderr
    assert {"report.sr.dcm", "summary.sc.dcm", "result.json"} <= {p.name for p in out.iterdir()}
    written = json.loads((out / "result.json").read_text())
    assert written["report_sop_instance_uids"]["sr"]
    probability = written["probability_of_pathology"]
    assert probability == result["probability_of_pathology"] < 1.0
    assert result["pathology"] == int(probability >= 0.5)
    assert written["pathology"] == 0
    assert written["most_dangerous_pathology_type"] == "No significant pathology"
    few = write_series(ct_series(10, 16, 16, seed="few"), tmp_path / "few")
    short = analyze(str(few[0].parent))
    assert short.returncode == 3 and "too_few_slices" in short.stderr
