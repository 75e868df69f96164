"""The trained fusion at analysis time: loading with every refusal named, calibrated output,
SHAP contributions, the most-dangerous rule, and the SR, SC and JSON that carry them."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from config import FusionSettings, NeuralSettings, Settings
from inference import weights_store as weights
from inference.calibration import Calibrator
from inference.ensemble import feature_schema
from inference.feature_schema import Feature, FeatureSchema, FeatureSet
from inference.findings import NO_PATHOLOGY, AnalyzerResult
from inference.fusion import load_fusion
from inference.fusion.rules import RuleBasedFusion
from inference.fusion.trained import (
    Bundle,
    FusionModelError,
    TrainedFusion,
    load,
    most_dangerous_contributing,
)
from inference.loading import load_series
from inference.weights_store import update_manifest
from reporting import write_outputs
from tests.conftest import ctnode_command, subprocess_env
from tests.factory import ct_series, write_series
from tests.reporting_factory import make_analysis
from tests.test_fusion_training import KNOWN, synthetic
from tests.test_sr import dciodvfy, dciodvfy_warnings
from training.register import register
from training.train import TrainOptions, train

SCHEMA = feature_schema()
NAME = "site-fusion"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding a model trained on the synthetic cohort (small and quick)."""
    x, y = synthetic(300, seed=3)
    result = train(x, y, SCHEMA, TrainOptions(folds=3, bootstrap=100))
    folder = tmp_path_factory.mktemp("weights")
    bundle = Bundle(
        name=NAME,
        version="7",
        model_sha256=hashlib.sha256(result.model_text.encode()).hexdigest(),
        schema=SCHEMA,
        calibrator=result.calibrator,
        threshold=result.threshold,
        threshold_rule="youden",
        pathology="any abnormality",
    )
    register(folder, result.model_text, bundle)
    return folder


def results_for(values: dict[str, float]) -> list[AnalyzerResult]:
    features = {name: values.get(name, 0.0) for name in SCHEMA.names}
    return [AnalyzerResult("quantitative", "1.0.0", features=features, features_version="1")]


def test_trained_fusion_gives_calibrated_probability_and_shap(store: Path) -> None:
    model = load(store, NAME, SCHEMA, top_k=4)
    entries = {e.name: e for e in weights.read_manifest(store / "manifest.toml")}
    sick = model.fuse(results_for({KNOWN[0]: 2.0, KNOWN[1]: 1.5, KNOWN[2]: -1.0}))
    well = model.fuse(results_for({KNOWN[0]: -2.0, KNOWN[1]: -1.5, KNOWN[2]: 1.0}))
    assert sick.pathology and not well.pathology
    assert sick.probability_of_pathology > 0.8 > 0.2 > well.probability_of_pathology
    assert sick.calibrated and sick.method == NAME and sick.version == "7"
    assert sick.weights_sha256 == (entries[NAME].sha256, entries[f"{NAME}.calibrator"].sha256)
    assert len(sick.top_features) == 4
    shaps = [abs(s) for _, _, s in sick.top_features]
    assert shaps == sorted(shaps, reverse=True)
    assert {name for name, _, _ in sick.top_features[:3]} == set(KNOWN)
    assert sick.most_dangerous_pathology_type in ("Emphysema", "Lung opacity", "Lung nodule")
    assert well.most_dangerous_pathology_type == NO_PATHOLOGY
    # TreeExplainer's SHAP values add up to the booster's raw score
    row = SCHEMA.vector(results_for({KNOWN[0]: 2.0}))[None, :]
    margin, shap = model.explain(row)
    expected = model.explainer.expected_value
    assert float(np.sum(shap) + np.ravel(expected)[-1]) == pytest.approx(margin[0], abs=1e-6)


def test_missing_analyzer_means_missing_values_not_an_error(store: Path) -> None:
    model = load(store, NAME, SCHEMA)
    fused = model.fuse([])  # the quantitative analyzer produced nothing: all NaN
    assert 0.0 <= fused.probability_of_pathology <= 1.0
    assert all(math.isnan(value) for _, value, _ in fused.top_features)


def test_most_dangerous_combines_severity_and_positive_contribution() -> None:
    # the most severe type among those pushing towards pathology
    assert most_dangerous_contributing({"Emphysema": 2.0, "Consolidation": 0.8}) == "Consolidation"
    # a negligible push (under a tenth of all positive pushes) does not compete
    assert most_dangerous_contributing({"Emphysema": 2.0, "Consolidation": 0.1}) == "Emphysema"
    # pushing away from pathology never names a type
    assert most_dangerous_contributing({"Consolidation": -3.0, "Lung nodule": 0.5}) == (
        "Lung nodule"
    )
    assert most_dangerous_contributing({"Consolidation": -1.0}) is None


def test_settings_choose_the_fusion(store: Path) -> None:
    assert isinstance(load_fusion(Settings(), feature_schema()), RuleBasedFusion)
    settings = Settings(
        neural=NeuralSettings(weights_dir=str(store)),
        fusion=FusionSettings(model=NAME, top_k=3),
    )
    model = load_fusion(settings, feature_schema())
    assert isinstance(model, TrainedFusion) and model.top_k == 3


def _copy_store(store: Path, target: Path) -> Path:
    target.mkdir()
    for path in store.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_every_refusal_is_named(store: Path, tmp_path: Path) -> None:
    with pytest.raises(FusionModelError, match="'other' is not in the manifest") as exc:
        load(store, "other", SCHEMA)
    assert exc.value.reason == "unknown-model"
    # the node runs an analyzer version whose features differ
    extra = replace(SCHEMA.sets[0], features=(*SCHEMA.sets[0].features, Feature("quant.new")))
    changed = FeatureSchema((replace(extra, version="2"),))
    with pytest.raises(FusionModelError, match=r"does not know: quant\.new") as exc:
        load(store, NAME, changed)
    assert exc.value.reason == "schema-mismatch" and "retrain" in str(exc.value)
    # the model needs an analyzer the node does not run
    other = FeatureSchema((FeatureSet("ctclip", "1", (Feature("ctclip.x"),)),))
    with pytest.raises(FusionModelError, match=r"analyzer\(s\) quantitative, which this node"):
        load(store, NAME, other)
    # a file changed after registration
    corrupt = _copy_store(store, tmp_path / "corrupt")
    model_path = corrupt / f"{NAME}.lgbm.txt"
    model_path.write_bytes(model_path.read_bytes().replace(b"Tree=0", b"Tree=9", 1))
    with pytest.raises(FusionModelError, match="corrupt: fusion model 'site-fusion'"):
        load(corrupt, NAME, SCHEMA)
    # a registered file that LightGBM cannot read (hashes consistent, content not a model)
    unreadable = _copy_store(store, tmp_path / "unreadable")
    garbage = b"this is not a LightGBM model\n"
    (unreadable / f"{NAME}.lgbm.txt").write_bytes(garbage)
    bundle_path = unreadable / f"{NAME}.calibrator.json"
    bundle = json.loads(bundle_path.read_text())
    bundle["model_sha256"] = hashlib.sha256(garbage).hexdigest()
    bundle_path.write_text(json.dumps(bundle))
    entries = weights.read_manifest(unreadable / "manifest.toml")
    update_manifest(
        unreadable / "manifest.toml",
        tuple(
            replace(
                e,
                sha256=weights.sha256_file(unreadable / e.file),
                size=(unreadable / e.file).stat().st_size,
            )
            for e in entries
        ),
    )
    (unreadable / ".sha256-cache.json").unlink(missing_ok=True)
    with pytest.raises(
        FusionModelError, match=r"unreadable: site-fusion\.lgbm\.txt is not a Light"
    ):
        load(unreadable, NAME, SCHEMA)
    # calibrator of another training
    mixed = _copy_store(store, tmp_path / "mixed")
    bundle_path = mixed / f"{NAME}.calibrator.json"
    bundle = json.loads(bundle_path.read_text())
    bundle["model_sha256"] = "0" * 64
    bundle_path.write_text(json.dumps(bundle))
    update_manifest(
        mixed / "manifest.toml",
        tuple(
            replace(
                e, sha256=weights.sha256_file(mixed / e.file), size=(mixed / e.file).stat().st_size
            )
            for e in weights.read_manifest(mixed / "manifest.toml")
        ),
    )
    with pytest.raises(FusionModelError, match="inconsistent"):
        load(mixed, NAME, SCHEMA)
    missing = _copy_store(store, tmp_path / "missing")
    (missing / f"{NAME}.lgbm.txt").unlink()
    with pytest.raises(FusionModelError, match="missing: fusion model 'site-fusion'"):
        load(missing, NAME, SCHEMA)


def test_calibrator_round_trip() -> None:
    platt = Calibrator("platt", a=1.5, b=-0.2)
    assert Calibrator.from_json(platt.to_json()) == platt
    iso = Calibrator("isotonic", x=(-1.0, 0.0, 2.0), y=(0.1, 0.4, 0.9))
    assert Calibrator.from_json(iso.to_json()) == iso
    assert iso(np.array([-5.0, 1.0, 5.0])).tolist() == pytest.approx([0.1, 0.65, 0.9])
    with pytest.raises(ValueError, match="unknown calibration method"):
        Calibrator.from_json({"method": "magic"})


def test_sr_sc_and_json_carry_the_trained_fusion(store: Path, tmp_path: Path) -> None:
    paths = write_series(ct_series(rows=16, columns=16), tmp_path / "src")
    volume = load_series(paths)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    model = load(store, NAME, SCHEMA, top_k=5)
    values = {KNOWN[0]: 2.0, KNOWN[1]: 1.5, KNOWN[2]: float("nan")}
    fused = model.fuse(results_for(values))
    analysis = replace(make_analysis(volume), fusion=fused)
    files = write_outputs(analysis, volume, sources, tmp_path / "out")
    result = json.loads(files.json.read_text())
    assert result["fusion"]["method"] == NAME and result["fusion"]["calibrated"] is True
    assert [f["feature"] for f in result["top_shap_features"]] == [
        n for n, _, _ in fused.top_features
    ]
    nodule = next(f for f in result["top_shap_features"] if f["feature"] == KNOWN[2])
    assert nodule["value"] is None  # missing feature: null, not NaN
    assert dciodvfy(files.sr) == []
    assert [w for w in dciodvfy_warnings(files.sr) if "<99CTNODE>" not in w] == []
    sr = pydicom.dcmread(files.sr)
    texts, nums = [], {}

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                texts.append(item.TextValue)
            if item.ValueType == "NUM":
                meaning = item.ConceptNameCodeSequence[0].CodeMeaning
                nums[meaning] = float(item.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    # the overall result is text in the report's Qualitative Evaluations (no image shows it,
    # and OHIF cannot load a measurement group without one): the fusion's name, version,
    # weight hashes and largest contributions
    (overall,) = [t for t in texts if t.startswith(("Pathology suspected", "No pathology"))]
    assert f"Fusion {NAME} 7" in overall
    assert fused.weights_sha256[0] in overall
    for name, value, shap in fused.top_features:
        shown = "missing" if math.isnan(value) else f"{value:.4g}"
        assert f"{name} = {shown} ({shap:+.3f})" in overall
    assert f"{KNOWN[2]} = missing" in overall  # a missing value is not written as a number
    assert not any(name.startswith("SHAP") for name in nums)
    summary = pydicom.dcmread(files.sc[0]).pixel_array.astype(int)
    chart = summary[560:800, 760:1000]
    red = (chart[..., 0] > 200) & (chart[..., 1] < 120) & (chart[..., 2] < 100)
    assert red.sum() > 500  # bars pushing towards pathology


def test_serve_refuses_an_unusable_model(tmp_path: Path) -> None:
    env = subprocess_env(
        CTNODE_STORAGE__DATA_DIR=str(tmp_path / "var"),
        CTNODE_NEURAL__WEIGHTS_DIR=str(tmp_path / "weights"),
        CTNODE_FUSION__MODEL="site-fusion",
    )
    started = subprocess.run(
        ctnode_command("serve"), env=env, capture_output=True, text=True, timeout=60
    )
    assert started.returncode == 2
    assert "cannot start: unknown-model: fusion model 'site-fusion'" in started.stderr
    assert "there is no weights manifest" in started.stderr
