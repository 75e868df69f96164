"""A site-trained fusion model at analysis time: LightGBM over every analyzer's features,
calibrated, explained by SHAP (TreeExplainer).

The model is two files of the weights store, both in ``manifest.toml`` with analyzer
``fusion`` and verified by sha256 before use: ``<name>.lgbm.txt`` (LightGBM's text format;
manifest entry ``<name>``) and ``<name>.calibrator.json`` (entry ``<name>.calibrator``: the
feature schema, the calibrator, the threshold and the model file's sha256, so the two files
cannot be mixed across trainings). ``ctnode fusion train`` writes both.

SHAP values are in log-odds of the uncalibrated booster (TreeExplainer's exact tree SHAP:
expected value plus the contributions is the booster's raw score); they rank and sign the
features' influence, the calibrated probability is the number to read.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference import weights_store
from inference.calibration import Calibrator
from inference.feature_schema import FeatureSchema, SchemaMismatch, check
from inference.findings import (
    NO_PATHOLOGY,
    UNSPECIFIED,
    AnalyzerResult,
    Fusion,
    by_severity,
    most_dangerous,
)

Matrix = npt.NDArray[np.float64]
FORMAT = "ctnode-fusion/1"
ANALYZER = "fusion"
# A finding type competes for "most dangerous" only if its features pushed the decision
# towards pathology by at least this share of all positive pushes.
MIN_CONTRIBUTION_SHARE = 0.1


class FusionModelError(ValueError):
    """A fusion model that cannot be used; ``reason`` is a short code (``unknown-model``,
    ``missing``, ``corrupt``, ``unreadable``, ``inconsistent``, ``missing-analyzers``,
    ``schema-mismatch``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def model_file(name: str) -> str:
    return f"{name}.lgbm.txt"


def calibrator_file(name: str) -> str:
    return f"{name}.calibrator.json"


def calibrator_entry(name: str) -> str:
    return f"{name}.calibrator"


@dataclass(frozen=True)
class Bundle:
    """The contents of ``<name>.calibrator.json``: what turns the booster into a result."""

    name: str
    version: str
    model_sha256: str
    schema: FeatureSchema
    calibrator: Calibrator
    threshold: float
    threshold_rule: str
    pathology: str

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "model_file": model_file(self.name),
            "model_sha256": self.model_sha256,
            "pathology": self.pathology,
            "threshold": {"value": self.threshold, "rule": self.threshold_rule},
            "calibrator": self.calibrator.to_json(),
            "schema": self.schema.to_json(),
            "shap_units": "log-odds of the uncalibrated booster",
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Bundle:
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        try:
            threshold = float(data["threshold"]["value"])
            bundle = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                model_sha256=str(data["model_sha256"]),
                schema=FeatureSchema.from_json(data["schema"]),
                calibrator=Calibrator.from_json(data["calibrator"]),
                threshold=threshold,
                threshold_rule=str(data["threshold"]["rule"]),
                pathology=str(data.get("pathology", "any abnormality")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"missing or malformed field {exc}") from exc
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold {threshold} is not a probability")
        return bundle


class TrainedFusion:
    """``FusionModel`` backed by a LightGBM booster, its calibrator and TreeExplainer."""

    def __init__(
        self,
        bundle: Bundle,
        booster: Any,
        explainer: Any,
        *,
        top_k: int = 5,
        weights_sha256: tuple[str, ...] = (),
    ) -> None:
        self.bundle = bundle
        self.name = bundle.name
        self.version = bundle.version
        self.booster = booster
        self.explainer = explainer
        self.top_k = top_k
        self.weights_sha256 = weights_sha256 or (bundle.model_sha256,)
        self._lock = threading.Lock()  # one worker thread at a time in the booster

    @property
    def schema(self) -> FeatureSchema:
        return self.bundle.schema

    def explain(
        self, rows: np.ndarray[Any, Any]
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """(raw scores, SHAP values) for ``rows`` (n x features, schema order)."""
        with self._lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # shap's notice that its LightGBM output changed
            margins = np.asarray(self.booster.predict(rows, raw_score=True), dtype=np.float64)
            shap = self.explainer.shap_values(rows)
        if isinstance(shap, list):
            shap = shap[-1]
        return margins, np.asarray(shap, dtype=np.float64).reshape(rows.shape)

    def fuse(self, results: Sequence[AnalyzerResult]) -> Fusion:
        names = self.schema.names
        row = self.schema.vector(results)
        margins, shap = self.explain(row[None, :])
        probability = float(self.bundle.calibrator(margins)[0])
        contributions = shap[0]
        order = sorted(range(len(names)), key=lambda i: (-abs(contributions[i]), names[i]))
        top = tuple(
            (names[i], float(row[i]), round(float(contributions[i]), 6))
            for i in order[: self.top_k]
        )
        pathology = probability >= self.bundle.threshold
        return Fusion(
            method=self.name,
            version=self.version,
            probability_of_pathology=round(probability, 4),
            pathology=pathology,
            most_dangerous_pathology_type=self._most_dangerous(pathology, contributions, results),
            calibrated=True,
            top_features=top,
            threshold=self.bundle.threshold,
            weights_sha256=self.weights_sha256,
        )

    def _most_dangerous(
        self,
        pathology: bool,
        contributions: Matrix,
        results: Sequence[AnalyzerResult],
    ) -> str:
        """``most_dangerous_contributing`` over the finding types the
        features measure; when no type pushed towards pathology, the most severe finding an
        analyzer marked present; else ``Unspecified abnormality``."""
        if not pathology:
            return NO_PATHOLOGY
        by_label: dict[str, float] = {}
        for name, value in zip(self.schema.names, contributions, strict=True):
            label = self.schema.labels[name]
            if label:
                by_label[label] = by_label.get(label, 0.0) + float(value)
        chosen = most_dangerous_contributing(by_label)
        if chosen:
            return chosen
        present = [f for r in results for f in r.findings if f.present]
        return most_dangerous(present) if present else UNSPECIFIED


def most_dangerous_contributing(contributions: Mapping[str, float]) -> str | None:
    """The trained fusion's rule: among finding types whose features together pushed the
    decision towards pathology (summed SHAP value > 0) by at least
    ``MIN_CONTRIBUTION_SHARE`` of all such pushes, the most severe (``SEVERITY``); None
    when no finding type pushed towards pathology.

    Severity decides among real contributors because a radiologist must see the most
    urgent of them first; the share keeps a negligible push from a severe type (a few
    hundredths of a log-odd) from outranking the finding that actually drove the decision.
    """
    positive = {label: c for label, c in contributions.items() if c > 0}
    total = sum(positive.values())
    if total <= 0:
        return None
    eligible = by_severity({k for k, c in positive.items() if c >= MIN_CONTRIBUTION_SHARE * total})
    return eligible[0] if eligible else None


def load(store: Path, name: str, node_schema: FeatureSchema, *, top_k: int = 5) -> TrainedFusion:
    """The model ``name`` from the weights store at ``store``, verified and checked against
    ``node_schema``; :class:`FusionModelError` says what is wrong and what to do."""
    manifest = store / "manifest.toml"
    if not manifest.is_file():
        raise FusionModelError(
            "unknown-model",
            f"fusion model {name!r}: there is no weights manifest {manifest} "
            "(ctnode fusion train --store writes one)",
        )
    try:
        entries = weights_store.read_manifest(manifest)
        entry = weights_store.find(entries, name)
    except weights_store.WeightsError as exc:
        raise FusionModelError(
            "unknown-model", f"fusion model {name!r}: {exc} (manifest {manifest})"
        ) from exc
    if entry.analyzer != ANALYZER or entry.file != model_file(name):
        raise FusionModelError(
            "unknown-model",
            f"{name!r} in {manifest} is not a fusion model ({entry.analyzer}: {entry.file})",
        )
    try:
        companion = weights_store.find(entries, calibrator_entry(name))
    except weights_store.WeightsError as exc:
        raise FusionModelError(
            "missing",
            f"fusion model {name!r} has no {calibrator_entry(name)!r} entry in {manifest}",
        ) from exc
    for item in (entry, companion):
        state, why = weights_store.status(store, item)
        if state != "present":
            raise FusionModelError(state, f"fusion model {name!r}: {why}")
    try:
        bundle = Bundle.from_json(json.loads((store / companion.file).read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise FusionModelError("unreadable", f"{companion.file}: {exc}") from exc
    if bundle.model_sha256 != entry.sha256 or bundle.name != name:
        raise FusionModelError(
            "inconsistent",
            f"{companion.file} belongs to another training than {entry.file} "
            "(model sha256 differs): train again or restore both files",
        )
    try:
        check(bundle.schema, node_schema, what=f"fusion model {name!r}")
    except SchemaMismatch as exc:
        raise FusionModelError(exc.reason, str(exc)) from exc
    booster, explainer = _open_booster(store / entry.file, bundle.schema)
    return TrainedFusion(
        bundle,
        booster,
        explainer,
        top_k=top_k,
        weights_sha256=(entry.sha256, companion.sha256),
    )


def _open_booster(path: Path, schema: FeatureSchema) -> tuple[Any, Any]:
    """The LightGBM booster and its TreeExplainer; a file LightGBM cannot parse, or whose
    feature names are not the schema's, is ``unreadable``."""
    # lightgbm and shap take about 3 s to import: only a node that opens a model pays it
    import lightgbm  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shap's deprecation notices at import
        import shap  # noqa: PLC0415
    try:
        booster = lightgbm.Booster(model_file=str(path))
    except (lightgbm.basic.LightGBMError, OSError, ValueError) as exc:
        raise FusionModelError(
            "unreadable", f"{path.name} is not a LightGBM model: {str(exc).strip()[:200]}"
        ) from exc
    if tuple(booster.feature_name()) != schema.names:
        raise FusionModelError(
            "unreadable",
            f"{path.name} has {booster.num_feature()} features that are not its schema's "
            f"{len(schema.names)}",
        )
    try:
        explainer = shap.TreeExplainer(booster)
    except Exception as exc:  # shap raises bare Exceptions for models it cannot parse
        raise FusionModelError("unreadable", f"{path.name}: SHAP cannot read it: {exc}") from exc
    return booster, explainer
