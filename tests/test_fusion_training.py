"""Fusion training on a synthetic cohort whose label is a known function of three features
plus noise: discrimination, SHAP ranking, calibration, determinism; labels and feature
tables with their errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inference.ensemble import feature_schema
from inference.findings import CT_RATE_LABELS
from training import calibration, metrics
from training.labels import ANY, LabelError, join, read_labels
from training.table import FeatureTable, TableError
from training.train import TrainingResult, TrainOptions, train
from training.workflow import min_per_class

SCHEMA = feature_schema()
NAMES = SCHEMA.names
KNOWN = (
    "quant.both_lungs.laa_950",
    "quant.both_lungs.percentage_of_opacity",
    "quant.nodule.max_diameter_mm",
)


def synthetic(n: int, seed: int = 7) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int_]]:
    """Every feature standard normal, 5 % missing; P(y = 1) = sigmoid(3 a + 2.5 b - 2 c - 0.5)
    for the three KNOWN features (missing counts as 0): the rest is noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(NAMES)))
    x[rng.random(x.shape) < 0.05] = np.nan
    a, b, c = (np.nan_to_num(x[:, NAMES.index(k)]) for k in KNOWN)
    logit = 3.0 * a + 2.5 * b - 2.0 * c - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int_)
    return x, y


@pytest.fixture(scope="module")
def cohort() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int_]]:
    return synthetic(800)


@pytest.fixture(scope="module")
def trained(cohort: tuple[npt.NDArray[np.float64], npt.NDArray[np.int_]]) -> TrainingResult:
    x, y = cohort
    return train(x, y, SCHEMA, TrainOptions(bootstrap=300))


def test_known_features_discriminate_rank_first_and_calibrate(trained: TrainingResult) -> None:
    auroc = trained.metrics["auroc"]
    assert auroc["value"] > 0.9
    assert auroc["ci95"][0] < auroc["value"] < auroc["ci95"][1]
    assert all(v > 0.8 for v in trained.metrics["fold_auroc"])
    assert {name for name, _ in trained.shap_ranking[:3]} == set(KNOWN)
    assert trained.metrics["ece"] < 0.05
    assert trained.metrics["brier"] < 0.15
    assert trained.calibration_method == "platt"  # 800 studies: below the isotonic minimum
    at = trained.metrics["at_threshold"]
    assert at["sensitivity"]["value"] > 0.8 and at["specificity"]["value"] > 0.8
    assert at["tp"] + at["fp"] + at["tn"] + at["fn"] == 800
    assert len(trained.folds) == 5 and all(f.best_iteration >= 1 for f in trained.folds)


def test_same_seed_same_model_bytes(
    cohort: tuple[npt.NDArray[np.float64], npt.NDArray[np.int_]], trained: TrainingResult
) -> None:
    x, y = cohort
    again = train(x, y, SCHEMA, TrainOptions(bootstrap=300))
    assert again.model_text.encode() == trained.model_text.encode()
    assert again.calibrator == trained.calibrator and again.threshold == trained.threshold
    other = train(x, y, SCHEMA, TrainOptions(seed=43, bootstrap=300))
    assert other.model_text != trained.model_text


def test_calibrators() -> None:
    separable = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    platt = calibration.fit_platt(separable, labels)
    p = platt(separable)
    assert np.all(np.isfinite([platt.a, platt.b])) and np.all(np.diff(p) > 0)
    assert 0.5 < p[-1] < 1.0 and 0.0 < p[0] < 0.5  # Platt's targets keep it off 0 and 1
    rng = np.random.default_rng(1)
    margins = rng.normal(size=2000)
    outcome = (rng.random(2000) < 1 / (1 + np.exp(-2 * margins))).astype(np.int_)
    iso = calibration.fit_isotonic(margins, outcome)
    q = iso(np.sort(margins))
    assert np.all(np.diff(q) >= 0) and q.min() >= 0 and q.max() <= 1
    assert calibration.choose("auto", 999)[0] == "platt"
    assert calibration.choose("auto", 1000)[0] == "isotonic"
    assert "Niculescu-Mizil" in calibration.choose("auto", 10)[1]


def test_threshold_rules() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    youden = metrics.choose_threshold(y, p, None)
    assert youden == pytest.approx(0.65)  # between 0.7 (lowest positive kept) and 0.6
    at = metrics.at_threshold(y, p, youden)
    assert (at["tp"], at["fp"]) == (3, 0)
    sensitive = metrics.choose_threshold(y, p, 1.0)
    assert metrics.at_threshold(y, p, sensitive)["sensitivity"]["value"] == 1.0
    assert sensitive == pytest.approx(0.35)
    assert metrics.auroc(y, p) == pytest.approx(15 / 16)


def _table(sources: list[str]) -> FeatureTable:
    rng = np.random.default_rng(0)
    rows = [
        (f"1.2.3.{i}", f"1.2.3.{i}.1", source, tuple(rng.normal(size=len(NAMES))))
        for i, source in enumerate(sources)
    ]
    return FeatureTable.from_rows(SCHEMA, rows)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_ct_rate_labels_join_by_volume_name(tmp_path: Path) -> None:
    table = _table([f"train_{i}_a_1" for i in range(6)] + ["unlabelled"])
    rows = []
    for i in range(6):
        values = [0] * len(CT_RATE_LABELS)
        if i % 2:
            values[CT_RATE_LABELS.index("Lung nodule" if i == 1 else "Emphysema")] = 1
        rows.append([f"train_{i}_a_1.nii.gz", *values])
    path = _write_csv(tmp_path / "labels.csv", ["VolumeName", *CT_RATE_LABELS], rows)
    labels = read_labels(path)
    assert labels.format == "ct-rate" and labels.pathology == ANY
    cohort = join(table, labels, min_per_class=2)
    assert list(cohort.y) == [0, 1, 0, 1, 0, 1] and cohort.unlabelled_rows == 1
    nodule = join(table, read_labels(path, "lung nodule"), min_per_class=1)
    assert list(nodule.y) == [0, 1, 0, 0, 0, 0]


def test_simple_labels_by_study_uid(tmp_path: Path) -> None:
    table = _table(["a", "b", "c", "d"])
    path = _write_csv(
        tmp_path / "l.csv", ["study_uid", "pathology"], [[f"1.2.3.{i}", i % 2] for i in range(4)]
    )
    cohort = join(table, read_labels(path), min_per_class=2)
    assert list(cohort.y) == [0, 1, 0, 1] and cohort.x.shape == (4, len(NAMES))


def test_label_errors_are_clear(tmp_path: Path) -> None:
    table = _table(["a", "b", "c", "d"])
    unknown = _write_csv(
        tmp_path / "unknown.csv",
        ["study_uid", "pathology"],
        [["1.2.3.0", 0], ["1.2.3.1", 1], ["9.9.9", 1], ["1.2.3.2", 0], ["1.2.3.3", 1]],
    )
    with pytest.raises(LabelError, match=r"1 of 5 labels name studies that are not in the") as e:
        join(table, read_labels(unknown), min_per_class=2)
    assert "lines 4" in str(e.value) and "9.9.9" not in str(e.value)  # line numbers, no ids
    assert join(table, read_labels(unknown), ignore_unknown=True, min_per_class=2).rows
    single = _write_csv(
        tmp_path / "single.csv", ["study_uid", "pathology"], [[f"1.2.3.{i}", 1] for i in range(4)]
    )
    with pytest.raises(LabelError, match="all 4 labelled studies are 1 for 'any abnormality'"):
        join(table, read_labels(single))
    with pytest.raises(LabelError, match="cross-validation needs at least 5 of each"):
        join(table, read_labels(unknown), ignore_unknown=True, min_per_class=5)
    assert [min_per_class(k) for k in (2, 3, 5, 10)] == [4, 3, 5, 10]
    bad = _write_csv(tmp_path / "bad.csv", ["study_uid", "pathology"], [["1.2.3.0", "maybe"]])
    with pytest.raises(LabelError, match="line 2: 'pathology' is 'maybe', expected 0 or 1"):
        read_labels(bad)
    with pytest.raises(LabelError, match="no column 'Cardiomegaly'"):
        read_labels(unknown, "Cardiomegaly")
    no_id = _write_csv(tmp_path / "noid.csv", ["patient", "pathology"], [["x", 1]])
    with pytest.raises(LabelError, match="no identifier column"):
        read_labels(no_id)


def test_feature_table_round_trip_and_errors(tmp_path: Path) -> None:
    table = _table(["a", "b"])
    table.values[0, 3] = np.nan
    back = FeatureTable.read(table.write(tmp_path / "f.parquet"))
    assert back.schema == SCHEMA and back.source == ("a", "b")
    assert np.array_equal(back.values, table.values, equal_nan=True)
    pq.write_table(pa.table({"study_uid": ["1"]}), tmp_path / "plain.parquet")
    with pytest.raises(TableError, match="not a ctnode features file"):
        FeatureTable.read(tmp_path / "plain.parquet")
    stored = pq.read_table(tmp_path / "f.parquet")
    pq.write_table(stored.drop_columns([NAMES[5]]), tmp_path / "lacking.parquet")
    with pytest.raises(TableError, match=r"lacks the features of analyzer\(s\) quantitative"):
        FeatureTable.read(tmp_path / "lacking.parquet")
