"""From synthetic CTs to a site-trained fusion model in use, as a site would run it:
``ctnode features`` over a cohort of phantoms with and without a lesion, ``ctnode fusion
train`` on CT-RATE-style labels, then ``ctnode analyze`` with the trained model."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pydicom

from inference.findings import CT_RATE_LABELS
from tests.conftest import ctnode_command, subprocess_env
from tests.phantoms import chest_phantom


def ctnode(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ctnode_command(*args),
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_features_train_analyze(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    rows = []
    for i in range(16):
        lesion = 20.0 + 2 * i if i % 2 else 0.0
        chest_phantom(cohort / f"train_{i}_a_1", f"e2e-{i}", lesion_mm=lesion)
        labels = [0] * len(CT_RATE_LABELS)
        labels[CT_RATE_LABELS.index("Lung opacity")] = int(lesion > 0)
        rows.append([f"train_{i}_a_1.nii.gz", *labels])
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["VolumeName", *CT_RATE_LABELS])
        writer.writerows(rows)

    features = tmp_path / "features.parquet"
    out = ctnode(
        "features", *map(str, sorted(cohort.iterdir())), "--out", str(features), "--jobs", "2"
    )
    assert out.returncode == 0, out.stderr
    assert "16 studies" in out.stdout and "16 analysed" in out.stdout
    assert "16/16 inputs" in out.stderr  # the progress bar

    store = tmp_path / "weights"
    single = tmp_path / "single.csv"
    single.write_text("VolumeName,pathology\n" + "".join(f"train_{i}_a_1,1\n" for i in range(16)))
    refused = ctnode(
        "fusion",
        "--store",
        str(store),
        "train",
        "--features",
        str(features),
        "--labels",
        str(single),
    )
    assert refused.returncode == 1
    assert "all 16 labelled studies are 1" in refused.stderr

    trained = ctnode(
        "fusion",
        "--store",
        str(store),
        "train",
        "--features",
        str(features),
        "--labels",
        str(tmp_path / "labels.csv"),
        "--folds",
        "3",
        "--bootstrap",
        "200",
    )
    assert trained.returncode == 0, trained.stderr
    assert "site-fusion 1 (any abnormality): 16 studies, 8 positive" in trained.stdout
    card = json.loads((store / "site-fusion.card.json").read_text())
    assert card["metrics"]["auroc"]["value"] > 0.9
    assert card["calibration"]["method"] == "platt" and card["threshold"]["rule"] == "youden"
    for name in ("card.md", "roc.png", "calibration.png", "shap.png", "lgbm.txt"):
        assert (store / f"site-fusion.{name}").stat().st_size > 0
    listed = ctnode("weights", "--store", str(store), "list")
    assert listed.returncode == 0 and listed.stdout.count("present") == 2, listed.stdout
    check = ctnode("fusion", "--store", str(store), "check", "site-fusion")
    assert check.returncode == 0 and "usable on this node" in check.stdout, check.stderr

    new = tmp_path / "new"
    chest_phantom(new / "sick", "e2e-new-sick", lesion_mm=30.0)
    chest_phantom(new / "well", "e2e-new-well")
    env = {"CTNODE_NEURAL__WEIGHTS_DIR": str(store), "CTNODE_FUSION__MODEL": "site-fusion"}
    analysed = ctnode("analyze", str(new), "--out", str(tmp_path / "out"), **env)  # 2 studies
    assert analysed.returncode == 0, analysed.stderr
    assert analysed.stdout.count("site-fusion fusion 1, calibrated") == 2
    truth = {str(_study_uid(new / name)): expected for name, expected in (("sick", 1), ("well", 0))}
    for folder in sorted((tmp_path / "out").iterdir()):
        result = json.loads((folder / "result.json").read_text())
        assert result["fusion"]["method"] == "site-fusion"
        assert result["fusion"]["weights_sha256"][0] == card["files"]["model"]["sha256"]
        assert result["pathology"] == truth.pop(result["study_uid"]), result
        assert len(result["top_shap_features"]) == 5
        assert (folder / "report.sr.dcm").is_file()
        if not result["pathology"]:
            assert result["most_dangerous_pathology_type"] == "No significant pathology"
    assert not truth
    unknown = ctnode(
        "analyze",
        str(new / "well"),
        CTNODE_FUSION__MODEL="nowhere",
        **{"CTNODE_NEURAL__WEIGHTS_DIR": str(store)},
    )
    assert unknown.returncode == 4 and "'nowhere' is not in the manifest" in unknown.stderr


def _study_uid(folder: Path) -> str:
    first = next(folder.iterdir())
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)
