"""The diffusion anomaly detector in the node: without a GPU it does not run by default and
every output says why; in reduced mode it runs on the CPU with generated tiny weights and its
score, volume and centre reach the SR (a TID 1411 group with its SCOORD3D centre), a colour
key image (Secondary Capture), the legacy JSON and the fusion features, each saying that the
procedure was reduced."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch (the 'neural' extra) is not installed")

import numpy as np
import pydicom
import torch

import config
from inference import ensemble
from inference.analyzer import Analyzer, Segmented
from inference.anomaly.analyzer import AnomalyDetector, Procedure, window
from inference.anomaly.card import ModelCard
from inference.anomaly.results import FEATURE_SET, LABEL, NAME, TITLE
from inference.findings import Analysis
from inference.loading import load_series
from inference.volume import Volume
from inference.weights_store import find, read_manifest
from reporting import write_outputs
from reporting.render import neural_lines, not_run_line
from tests.anomaly_store import make_store
from tests.http_node import make_node
from tests.neural_node import settings_for, sr_texts, weights_cli
from tests.phantoms import chest_phantom
from tests.test_predict import get, post, zip_files
from tests.test_sr import dciodvfy


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return chest_phantom(tmp_path_factory.mktemp("ct"), "anomaly", lesion_mm=25.0)


@pytest.fixture(scope="module")
def volume(files: list[Path]) -> Volume:
    return load_series(files)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the full mode runs")
def test_without_a_gpu_the_full_procedure_does_not_run_and_says_why(
    store: Path, volume: Volume, files: list[Path], tmp_path: Path
) -> None:
    built = ensemble.build(settings_for(store))
    state = {s.name: s for s in built.states}[NAME]
    assert not state.enabled and not state.fault
    assert "no GPU" in state.reason and "1,500 network evaluations" in state.reason
    assert 'mode = "reduced"' in state.reason
    assert built.names == ("quantitative",)
    analysis = built.run(volume, sharp_kernel=False)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    out = write_outputs(analysis, volume, sources, tmp_path / "out")
    result = json.loads(out.json.read_text())
    not_run = {a["analyzer"]: a["reason"] for a in result["analyzers_not_run"]}
    assert not_run[NAME] == state.reason
    assert f"{NAME}: {state.reason}" in sr_texts(out.sr)
    assert f"{NAME} (not run: no GPU on this node" in not_run_line(analysis)


def test_off_is_said_too(store: Path) -> None:
    state = {s.name: s for s in ensemble.build(settings_for(store, mode="off")).states}[NAME]
    assert not state.enabled and state.reason == 'not run: [neural.anomaly] mode = "off"'


@pytest.fixture(scope="module")
def reduced(store: Path, volume: Volume) -> tuple[ensemble.Ensemble, Analysis]:
    settings = settings_for(store, mode="reduced", reduced_steps=8, reduced_max_slices=3)
    built = ensemble.build(settings)
    return built, built.run(volume, sharp_kernel=False)


def test_reduced_mode_runs_on_the_cpu_and_says_so(
    reduced: tuple[ensemble.Ensemble, Analysis], volume: Volume, store: Path
) -> None:
    built, analysis = reduced
    assert built.names == ("quantitative", NAME)
    (detector,) = built.segmented
    assert isinstance(detector, AnomalyDetector)
    contract: Analyzer[Segmented] = detector
    entry = find(read_manifest(store / "manifest.toml"), "tiny-diffusion-anomaly")
    assert contract.name == NAME and contract.version.startswith("tiny-diffusion-anomaly-1/")
    assert contract.weights_sha256 == (entry.sha256, entry.companion_sha256)
    assert detector.procedure.schedule.steps == 8 and detector.procedure.noise_level == 4
    result = {r.analyzer: r for r in analysis.results}[NAME]
    assert result.version.endswith("/reduced-8-steps")
    assert tuple(result.features) == FEATURE_SET.names
    (finding,) = result.findings
    assert finding.label == LABEL and "REDUCED mode" in finding.description
    (shown,) = result.maps
    assert len(shown.slices) == 3 and "REDUCED" in shown.note
    lungs = analysis.masks["lung_left"] | analysis.masks["lung_right"]
    assert all(lungs[z].any() for z in shown.slices)
    inside = shown.values[lungs[list(shown.slices)]]
    percentile = next(m for m in finding.measurements if m.name == "Anomaly map percentile")
    assert percentile.value == pytest.approx(float(np.percentile(inside, 99.0)), rel=1e-6)
    assert finding.score == pytest.approx(percentile.value / (percentile.value + 0.2))
    # deterministic: the same series gives the same map
    again = detector.analyze(Segmented(volume, analysis.masks))
    assert np.array_equal(again.maps[0].values, shown.values)


def shown_note(analysis: Analysis) -> str:
    (result,) = (r for r in analysis.results if r.analyzer == NAME)
    return result.maps[0].note


def test_reduced_mode_outputs_are_valid_and_say_it_is_reduced(
    reduced: tuple[ensemble.Ensemble, Analysis],
    volume: Volume,
    files: list[Path],
    tmp_path: Path,
) -> None:
    _, analysis = reduced
    result = {r.analyzer: r for r in analysis.results}[NAME]
    (finding,) = result.findings
    assert finding.location is not None, "the tiny weights should leave an anomalous region"
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    out = write_outputs(analysis, volume, sources, tmp_path / "out")

    sr = pydicom.dcmread(out.sr)
    texts = sr_texts(out.sr)
    assert "CTN-0400" in texts and result.version in texts  # the group and TID 4019 version
    assert f"{NAME}: {shown_note(analysis)}" in texts  # the reduced procedure, in words
    coordinates = [e for e in sr.iterall() if e.keyword == "GraphicType" and e.value == "POINT"]
    assert coordinates, "the centre of the largest region is a SCOORD3D POINT"
    problems = dciodvfy(out.sr)
    assert problems == [], problems

    legacy = json.loads(out.json.read_text())
    analyzers = {a["analyzer"]: a for a in legacy["analyzers"]}
    assert analyzers[NAME]["version"].endswith("reduced-8-steps")
    assert analyzers[NAME]["features"]["diffusion_anomaly.anomalous_volume"] > 0
    assert legacy["diffusion_anomaly_scores"] == {LABEL: finding.score}

    maps = []
    for path in out.sc[1:]:
        sc = pydicom.dcmread(path)
        assert sc.BurnedInAnnotation == "YES"
        assert "not for primary diagnosis" in sc.SeriesDescription
        problems = dciodvfy(path)
        assert problems == [], problems
        pixels = sc.pixel_array
        strong = (pixels[..., 0] > 200) & (pixels[..., 2] < 60)  # the ramp's red end
        maps.append(strong.sum())
    assert len(out.sc) >= 3 and max(maps) > 0  # a key image with the colour map and its bar
    assert f"{TITLE}: {shown_note(analysis)}"[:108] in neural_lines(analysis)


def test_the_node_runs_the_reduced_detector_on_an_upload(
    store: Path, files: list[Path], tmp_path: Path
) -> None:
    anomaly = config.AnomalySettings(mode="reduced", reduced_steps=8, reduced_max_slices=2)
    node = make_node(tmp_path, neural={"weights_dir": str(store), "anomaly": anomaly})
    try:
        status, health = get(node, "/health")
        assert status == 200 and json.loads(health)["analyzers"][NAME]["enabled"] is True
        status, result = post(node, zip_files(files))
        assert status == 200, result
        analyzers = {a["analyzer"]: a for a in result["analyzers"]}
        assert analyzers[NAME]["version"].endswith("/reduced-8-steps")
        assert set(result["diffusion_anomaly_scores"]) == {LABEL}
    finally:
        node.stop()


def test_a_site_registers_both_checkpoints_and_both_are_verified(tmp_path: Path) -> None:
    obtained = make_store(tmp_path / "download")
    store = tmp_path / "weights"

    registered = weights_cli(
        store,
        "register",
        str(obtained / "model_tiny.pt"),
        "--name",
        "anomaly-ct",
        "--analyzer",
        NAME,
        "--companion",
        str(obtained / "modelclass_tiny.pt"),
        "--card",
        str(obtained / "card_tiny.json"),
    )
    assert registered.returncode == 0, registered.stderr
    entry = find(read_manifest(store / "manifest.toml"), "anomaly-ct")
    classifier = (obtained / "modelclass_tiny.pt").read_bytes()
    assert entry.companion == "modelclass_tiny.pt" and entry.card == "card_tiny.json"
    assert entry.companion_sha256 == hashlib.sha256(classifier).hexdigest()
    assert entry.companion_size == len(classifier)
    checked = weights_cli(store, "check")
    if not torch.cuda.is_available():  # not run here, and that is no fault of the weights
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"{NAME}\tdisabled\tnot run: no GPU on this node" in checked.stdout

    (store / "modelclass_tiny.pt").write_bytes(classifier[:-1] + bytes([classifier[-1] ^ 1]))
    checked = weights_cli(store, "check")
    assert checked.returncode == 1 and f"{NAME}\tFAULT" in checked.stdout
    assert "modelclass_tiny.pt sha256" in checked.stdout


def test_the_full_procedure_is_the_cards_and_the_reduced_one_says_what_it_cut() -> None:
    card = ModelCard()
    full = Procedure.from_card(card, config.AnomalySettings())
    assert (full.schedule.steps, full.noise_level, full.scale, full.note) == (1000, 500, 100.0, "")
    assert full.evaluations == (998, 499)  # "about 1,500 network evaluations per slice"
    reduced = Procedure.from_card(card, config.AnomalySettings(mode="reduced"))
    assert (reduced.schedule.steps, reduced.noise_level) == (20, 10)
    assert reduced.schedule.timesteps[10] == 500  # the same noise, in fewer steps
    assert reduced.note.startswith("REDUCED mode: 20 of 1000 steps, noise level 10")


def test_the_cards_window_maps_hu_to_the_networks_range() -> None:
    card = ModelCard(image_size=32, hu_window=(-1000.0, 400.0))
    hu = np.array([[[-2000.0, -1000.0], [-300.0, 1000.0]]], dtype=np.float32).repeat(16, 1)
    x = window(hu.repeat(16, 2), card)
    assert x.shape == (1, 1, 32, 32)
    assert x.min().item() == pytest.approx(-1.0) and x.max().item() == pytest.approx(1.0)
    assert x[0, 0, 24, 8].item() == pytest.approx(0.0)  # -300 HU: the window's middle
