"""fVLM in the node's ensemble: registered weights load once and score every analysed series on
the node's lung mask when TotalSegmentator's weights are absent (and every output says so), into
the features, the legacy JSON, the SR (passing dciodvfy) and the summary page."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch (the 'neural' extra) is not installed")

import numpy as np
import numpy.typing as npt
import pydicom
import torch

from inference import ensemble
from inference import weights_store as weights
from inference.analyzer import Segmented
from inference.ctclip.scoring import text_cache_path
from inference.findings import CT_RATE_LABELS
from inference.fvlm.checkpoint import load_checkpoint
from inference.fvlm.preprocess import label_volume, organ_windows, prepare
from inference.fvlm.results import (
    FEATURE_SET,
    LABELS,
    LUNG_ONLY,
    ORGAN_LABELS,
    ORGAN_OF,
    feature_name,
)
from inference.fvlm.scoring import FVLMScorer, prompt_table
from inference.loading import load_series
from inference.volume import Volume
from reporting import write_outputs
from reporting.render import neural_lines
from tests.fvlm_store import (
    TINY,
    make_store,
    tiny_config,
    tiny_state,
    vocab_file,
)
from tests.neural_node import settings_for, sr_texts, weights_cli
from tests.phantoms import chest_phantom
from tests.test_sr import dciodvfy
from tests.totalseg_weights import write_archive

LUNG = ORGAN_LABELS["lung"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("weights") / "store")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return chest_phantom(tmp_path_factory.mktemp("ct"), "fvlm", lesion_mm=25.0)


@pytest.fixture(scope="module")
def volume(files: list[Path]) -> Volume:
    return load_series(files)


@pytest.fixture(scope="module")
def built(store: Path) -> ensemble.Ensemble:
    return ensemble.build(settings_for(store))


def test_registered_fvlm_scores_the_lungs_on_the_node_mask(
    store: Path, built: ensemble.Ensemble, volume: Volume
) -> None:
    assert built.names == ("quantitative", "fvlm")
    fvlm_state = {s.name: s for s in built.states}["fvlm"]
    assert fvlm_state.reason == (
        "weights verified (tiny-fvlm); lung only, masks: ctnode (no TotalSegmentator weights "
        "registered)"
    )
    (scorer,) = built.segmented
    assert isinstance(scorer, FVLMScorer) and scorer.segmenter is None
    assert not hasattr(scorer.model, "text_encoder")  # the prompt latents are cached
    sha = scorer.weights_sha256[0]
    cache = text_cache_path(store / "fvlm_tiny.pth", sha)
    assert cache.is_file()

    analysis = built.run(volume, sharp_kernel=False)
    result = {r.analyzer: r for r in analysis.results}["fvlm"]
    # lung only: the 11 lung labels, in CT-RATE order; heart, esophagus, aorta absent
    assert [f.label for f in result.findings] == [lb for lb in CT_RATE_LABELS if lb in LUNG]
    assert result.notes[0] == LUNG_ONLY
    assert result.notes[1].startswith("heart, esophagus, aorta not scored (their 5 labels")
    assert "no TotalSegmentator weights registered" in result.notes[1]
    assert result.weights_sha256 == (sha,)
    row = dict(
        zip(
            built.feature_schema().names,
            built.feature_schema().vector(analysis.results),
            strict=True,
        )
    )
    assert not any(math.isnan(row[feature_name(lb)]) for lb in LUNG)
    assert all(math.isnan(row[feature_name(lb)]) for lb in LABELS if lb not in LUNG)
    assert FEATURE_SET.names == tuple(feature_name(lb) for lb in LABELS) and len(LABELS) == 16

    # the numbers are the model's: the checkpoint run by hand on the node's lung mask
    model = load_checkpoint(store / "fvlm_tiny.pth", tiny_config())
    text = prompt_table(torch.load(cache)["latents"])
    lungs = Segmented(volume, analysis.masks).lungs
    image, mask = prepare(volume, label_volume({"lung": lungs}))
    (window,) = organ_windows(image, mask)
    assert window.organs == (0,)
    with torch.no_grad():
        _, levels = model.visual_encoder(window.image)
        latent = model.organ_head(levels, model.token_flags(window.mask, 0)[0], 0).latent
        expected = {lb: float(model.logits(latent, text[lb]).softmax(-1)[0, 1]) for lb in LUNG}
    got = {f.label: f.score for f in result.findings}
    assert got == pytest.approx(expected, abs=1e-5)
    assert max(expected.values()) - min(expected.values()) > 1e-3  # labels told apart


def test_outputs_say_lung_only(
    built: ensemble.Ensemble, files: list[Path], volume: Volume, tmp_path: Path
) -> None:
    analysis = built.run(volume, sharp_kernel=False)
    fvlm = analysis.results[1]
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    out = write_outputs(analysis, volume, sources, tmp_path / "out")

    result = json.loads(out.json.read_text())
    assert result["fvlm_probabilities"] == {f.label: f.score for f in fvlm.findings}
    assert len(result["fvlm_probabilities"]) == 11
    (entry,) = [a for a in result["analyzers"] if a["analyzer"] == "fvlm"]
    assert entry["notes"][0] == LUNG_ONLY and entry["weights_sha256"] == list(fvlm.weights_sha256)

    (line,) = neural_lines(analysis)
    assert line.startswith(f"fVLM zero-shot ({LUNG_ONLY}; not calibrated): ")

    values = sr_texts(out.sr)
    assert f"fvlm: {LUNG_ONLY}" in values
    assert any(v.startswith("fvlm: heart, esophagus, aorta not scored") for v in values)
    emphysema = next(f for f in fvlm.findings if f.label == "Emphysema")
    assert (
        f"Emphysema: {emphysema.score:.2f} (score, not calibrated, present at 0.5; "
        f"fvlm {fvlm.version})"
    ) in values
    assert not any(v.startswith("Cardiomegaly:") for v in values)  # absent, not guessed
    problems = dciodvfy(out.sr)
    if problems is not None:
        assert problems == [], problems


def test_totalsegmentator_runs_on_the_store_weights_only(
    tmp_path: Path, volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip(
        "totalsegmentator", reason="TotalSegmentator (the 'organs' extra) is absent"
    )
    from inference.fvlm.organs import required_folders  # noqa: PLC0415 (needs the extra)

    for name in ("TOTALSEG_WEIGHTS_PATH", "TOTALSEG_HOME_DIR"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    store = make_store(tmp_path / "store")
    archive = write_archive(tmp_path / "totalseg-v2.zip")  # the fast model only
    entry = weights.register(store, archive, name="totalseg-v2", analyzer="totalsegmentator")
    # registered, but without the full mode's models: lung only, and the outputs say why
    built = ensemble.build(settings_for(store))
    (scorer,) = built.segmented
    assert isinstance(scorer, FVLMScorer) and scorer.segmenter is None
    assert "Dataset291" in scorer.fallback and "never downloaded" in scorer.fallback
    assert "TOTALSEG_WEIGHTS_PATH" not in os.environ
    lungs = {"lung_left": _half(volume, 0), "lung_right": _half(volume, 1)}
    result = scorer.analyze(Segmented(volume, lungs))
    assert result.notes[0] == LUNG_ONLY and "Dataset291" in result.notes[1]

    # the fast mode's model is there: TotalSegmentator is pointed at the store's copy
    fast = settings_for(store)
    fast = dataclasses.replace(fast, neural=dataclasses.replace(fast.neural, organs_fast=True))
    built = ensemble.build(fast)
    root = store / f"totalseg-v2.unpacked-{entry.sha256[:16]}" / "nnunet" / "results"
    assert (root / required_folders(fast=True)[0]).is_dir()
    assert os.environ["TOTALSEG_WEIGHTS_PATH"] == str(root)
    home = Path(os.environ["TOTALSEG_HOME_DIR"])
    assert home.is_relative_to(store)
    assert json.loads((home / "config.json").read_text())["send_usage_stats"] is False
    (scorer,) = built.segmented
    assert isinstance(scorer, FVLMScorer)
    if scorer.segmenter is None:  # a broken install says so, and fVLM still serves
        why = scorer.fallback
        assert "cannot be imported" in why or "is not installed" in why, why
        pytest.skip(f"TotalSegmentator's stack does not import here: {scorer.fallback}")
    fvlm_state = {s.name: s for s in built.states}["fvlm"]
    assert fvlm_state.reason.endswith("; organ masks: TotalSegmentator total fast (3 mm)")

    # a real run of TotalSegmentator (generated weights: its masks mean nothing) feeds fVLM
    threads = torch.get_num_threads()
    result = scorer.analyze(Segmented(volume, lungs))
    assert torch.get_num_threads() == threads  # TotalSegmentator's thread count undone
    assert result.notes[0] == "masks: TotalSegmentator total fast (3 mm)"
    scored = {ORGAN_OF[f.label] for f in result.findings}
    assert scored and all(f"{o} not scored" not in " ".join(result.notes) for o in scored)


def _half(volume: Volume, side: int) -> npt.NDArray[np.bool_]:
    """A box in one half of the body as a lung mask."""
    mask = np.zeros(volume.shape, dtype=bool)
    z, y, x = volume.shape
    mask[
        z // 4 : 3 * z // 4,
        y // 4 : 3 * y // 4,
        x // 8 + side * x // 2 : x // 2 - x // 8 + side * x // 2,
    ] = True
    return mask


def test_weights_without_a_vocabulary_or_cache_disable_fvlm_only(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", vocab=False)
    built = ensemble.build(settings_for(store))
    states = {s.name: s for s in built.states}
    assert not states["fvlm"].enabled and states["fvlm"].fault
    assert "vocab" in states["fvlm"].reason
    assert built.names == ("quantitative",)


def test_a_site_registers_fvlm_and_totalsegmentator_with_the_cli(tmp_path: Path) -> None:
    obtained = tmp_path / "download"
    obtained.mkdir()
    torch.save({"model": tiny_state(seed=2)}, obtained / "fvlm.pth")
    (obtained / "arch.json").write_text(json.dumps(TINY))
    vocab_file(obtained / "vocab.txt")
    with zipfile.ZipFile(obtained / "totalseg.zip", "w") as zf:
        zf.writestr("Dataset297_TotalSegmentator_total_3mm_1559subj/dataset.json", "{}")
    store = tmp_path / "weights"

    done = weights_cli(
        store,
        "register",
        str(obtained / "fvlm.pth"),
        "--name",
        "fvlm",
        "--analyzer",
        "fvlm",
        "--architecture",
        str(obtained / "arch.json"),
        "--vocab",
        str(obtained / "vocab.txt"),
    )
    assert done.returncode == 0, done.stderr
    done = weights_cli(
        store,
        "register",
        str(obtained / "totalseg.zip"),
        "--name",
        "totalseg-v2",
        "--analyzer",
        "totalsegmentator",
    )
    assert done.returncode == 0, done.stderr
    listed = weights_cli(store, "list")
    assert "totalseg-v2\t1\tpresent\ttotalsegmentator" in listed.stdout
    checked = weights_cli(store, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # registered, but the default (full) mode's models are not in the zip: said, not hidden
    line = next(x for x in checked.stdout.splitlines() if x.startswith("fvlm\t"))
    assert line.startswith("fvlm\tenabled\tweights verified (fvlm); lung only, masks: ctnode")
    if importlib.util.find_spec("totalsegmentator") is None:  # CI: no 'organs' extra
        assert "TotalSegmentator is not installed (the 'organs' extra)" in line
    else:
        assert "lack the full mode's Dataset291" in line
    sha = hashlib.sha256((obtained / "fvlm.pth").read_bytes()).hexdigest()
    assert text_cache_path(store / "fvlm.pth", sha).is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present here")
def test_a_cuda_device_that_is_not_there_disables_fvlm_with_the_reason(store: Path) -> None:
    settings = settings_for(store)
    settings = dataclasses.replace(
        settings, neural=dataclasses.replace(settings.neural, device="cuda")
    )
    built = ensemble.build(settings)
    state = {s.name: s for s in built.states}["fvlm"]
    assert not state.enabled and state.fault
    assert "no CUDA device is present" in state.reason
    assert built.names == ("quantitative",)
