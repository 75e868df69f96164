"""MedNeXt in the node's ensemble: registered weights and card load once, score every analysed
series on the node's lung mask, and show up in the features, the legacy JSON, the SR (which
dciodvfy passes), the summary page and ``/health``-style states; weights that cannot run
disable the analyzer with the reason."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch (the 'neural' extra) is not installed")

import numpy as np
import pydicom
import torch

from inference import ensemble
from inference.codes import finding_code
from inference.loading import load_series
from inference.mednext.analyzer import MedNeXtScorer, load_classifier
from inference.mednext.card import ModelCard
from inference.mednext.preprocess import preprocess
from inference.mednext.results import FEATURE_SET, feature_name
from inference.quant.segmentation import segment
from inference.volume import Volume
from inference.weights_store import find, read_manifest, sha256_file, update_manifest
from reporting import write_outputs
from reporting.render import neural_lines
from tests.conftest import REPO, ctnode_command, subprocess_env
from tests.mednext_store import LABELS, SITE_LABEL, make_store, phantom_card
from tests.neural_node import settings_for, sr_texts, weights_cli
from tests.phantoms import chest_phantom
from tests.test_sr import dciodvfy


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return chest_phantom(tmp_path_factory.mktemp("ct"), "mednext", lesion_mm=25.0)


@pytest.fixture(scope="module")
def volume(files: list[Path]) -> Volume:
    return load_series(files)


def test_registered_weights_join_the_ensemble_as_a_segmented_analyzer(
    store: Path, volume: Volume
) -> None:
    built = ensemble.build(settings_for(store))
    states = {s.name: s for s in built.states}
    assert states["mednext"].enabled and "tiny-mednext" in states["mednext"].reason
    assert built.names == ("quantitative", "mednext")
    (scorer,) = built.segmented
    assert isinstance(scorer, MedNeXtScorer) and scorer.device.type in ("cpu", "cuda")
    entry = find(read_manifest(store / "manifest.toml"), "tiny-mednext")
    card_sha = find(read_manifest(store / "manifest.toml"), "tiny-mednext").card
    assert scorer.weights_sha256[0] == entry.sha256 and card_sha == "tiny-mednext.card.json"

    analysis = built.run(volume, sharp_kernel=False)
    result = {r.analyzer: r for r in analysis.results}["mednext"]
    assert [f.label for f in result.findings] == list(LABELS)
    assert result.weights_sha256 == scorer.weights_sha256 and len(result.weights_sha256) == 2

    # the numbers are the model's on the node's own lung mask, preprocessed by the card
    card = ModelCard.read(store / "tiny-mednext.card.json")
    model = load_classifier(store / "tiny-mednext.pt", card)
    x = preprocess(volume.voxels, volume.spacing, segment(volume).lungs, card.preprocessing)
    with torch.no_grad():
        expected = torch.sigmoid(model(x[None]))[0].tolist()
    got = [f.score or 0.0 for f in result.findings]
    assert got == pytest.approx(expected, abs=1e-5)
    assert max(got) - min(got) > 0.05  # the labels are told apart
    for finding, threshold in zip(result.findings, card.thresholds, strict=True):
        assert finding.present == ((finding.score or 0.0) >= threshold)
        assert finding.threshold is not None and finding.threshold.value == threshold
        assert finding.code == finding_code(finding.label)

    # the fusion features: the seeds' 22 names; the card's own label is no feature, the
    # seed label the card lacks is NaN
    schema = built.feature_schema()
    assert schema.version == "quantitative-2+mednext-1"
    values = schema.values(analysis.results)
    mednext = [n for n in schema.names if n.startswith("mednext.")]
    assert tuple(mednext) == FEATURE_SET.names and len(mednext) == 22
    assert math.isnan(values[feature_name("Rib fracture")])
    assert values[feature_name("Pneumothorax")] == pytest.approx(got[LABELS.index("Pneumothorax")])
    assert sum(math.isnan(values[n]) for n in mednext) == 1
    assert feature_name(SITE_LABEL) not in values
    assert ensemble.planned_schema(settings_for(store)).names == schema.names


def test_outputs_carry_the_mednext_results(
    store: Path, files: list[Path], volume: Volume, tmp_path: Path
) -> None:
    analysis = ensemble.build(settings_for(store)).run(volume, sharp_kernel=False)
    result = analysis.results[1]
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    out = write_outputs(analysis, volume, sources, tmp_path / "out")
    legacy = json.loads(out.json.read_text())
    probabilities = legacy["mednext_probabilities"]
    assert list(probabilities) == list(LABELS)
    assert probabilities["Lung nodule"] == result.findings[LABELS.index("Lung nodule")].score
    analyzers = {a["analyzer"]: a for a in legacy["analyzers"]}
    assert analyzers["mednext"]["weights_sha256"] == list(result.weights_sha256)

    sr = pydicom.dcmread(out.sr)
    values = sr_texts(sr)
    nodule = result.findings[LABELS.index("Lung nodule")]
    assert (
        f"Lung nodule: {nodule.score:.2f} (score, not calibrated, present at "
        f"{nodule.threshold.value:g}; mednext {result.version})"  # type: ignore[union-attr]
    ) in values
    assert "36118008" in values  # Pneumothorax, SNOMED CT
    site = finding_code(SITE_LABEL)
    assert site.value.startswith("CTNL-") and site.value in values and SITE_LABEL in values
    weights, card = result.weights_sha256
    assert f"mednext {result.version}: weights_sha256={weights}, weights_sha256={card}" in values
    problems = dciodvfy(out.sr)
    if problems is not None:
        assert problems == [], problems

    (line,) = neural_lines(analysis)  # the labels present at their own thresholds
    present = sorted((f for f in result.findings if f.present), key=lambda f: -(f.score or 0))
    assert present and line.startswith(
        f"MedNeXt (not calibrated): {present[0].label} {present[0].score:.2f}"
    )
    below = [f for f in result.findings if not f.present and (f.score or 0) >= 0.5]
    assert all(f"{f.label} " not in line for f in below)


def test_weights_that_cannot_run_disable_mednext_with_the_reason(tmp_path: Path) -> None:
    no_card = make_store(tmp_path / "a", with_card=False)
    state = {s.name: s for s in ensemble.build(settings_for(no_card)).states}["mednext"]
    assert not state.enabled and state.fault and "--card" in state.reason

    other = phantom_card(labels=LABELS[:5])  # a card that is not the weights'
    store = make_store(tmp_path / "b")
    card = store / "tiny-mednext.card.json"
    other.write(card)  # edited in place: its registered sha256 no longer matches
    state = {s.name: s for s in ensemble.build(settings_for(store)).states}["mednext"]
    assert not state.enabled and state.fault
    assert "card tiny-mednext.card.json sha256" in state.reason

    manifest = store / "manifest.toml"  # registered as it is: it loads, and does not fit
    (entry,) = read_manifest(manifest)
    update_manifest(manifest, (dataclasses.replace(entry, card_sha256=sha256_file(card)),))
    state = {s.name: s for s in ensemble.build(settings_for(store)).states}["mednext"]
    assert not state.enabled and "shape-mismatch" in state.reason and "head.weight" in state.reason


def test_a_site_trains_registers_and_runs_mednext_from_the_command_line(tmp_path: Path) -> None:
    studies = []
    for i, lesion in enumerate((0.0, 30.0, 0.0, 30.0)):
        folder = tmp_path / f"study{i}"
        chest_phantom(folder, f"train{i}", lesion_mm=lesion)
        studies.append(folder)
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["VolumeName", "Lung nodule", "Emphysema"])
        for i, folder in enumerate(studies):
            writer.writerow([folder.name, i % 2, 0])
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps({"n_channels": 4, "exp_r": [2] * 9, "block_counts": [1] * 9}))
    store = tmp_path / "weights"
    done = subprocess.run(
        ctnode_command(
            "mednext",
            "--store",
            str(store),
            "train",
            *map(str, studies),
            "--labels",
            str(labels),
            "--work",
            str(tmp_path / "work"),
            "--architecture",
            str(arch),
            "--spacing",
            "8",
            "8",
            "8",
            "--input-size",
            "32",
            "32",
            "48",
            "--epochs",
            "2",
            "--val-fraction",
            "0.5",
            "--quiet",
        ),
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "site-mednext 1 (MedNeXt-custom k3): 4 studies, 2 validated" in done.stdout
    assert "Lung nodule: validation AUROC" in done.stdout
    assert (tmp_path / "work" / "model_latest.model").is_file()
    card = ModelCard.read(store / "site-mednext.mednext-card.json")
    assert card.labels == ("Lung nodule", "Emphysema") and card.training["epochs_run"] == 2
    assert card.thresholds[1] == 0.5  # no positive: no threshold to choose
    checked = weights_cli(store, "check")
    assert "mednext\tenabled\tweights verified (site-mednext)" in checked.stdout, checked.stdout
    built = ensemble.build(settings_for(store))
    analysis = built.run(
        load_series(sorted((tmp_path / "study1").rglob("*.dcm"))), sharp_kernel=False
    )
    assert [f.label for f in analysis.results[1].findings] == ["Lung nodule", "Emphysema"]
    assert not np.isnan(analysis.results[1].features[feature_name("Lung nodule")])
