"""``ctnode fusion train`` from end to end: features + labels -> cross-validated model,
calibrator, threshold, model card -> the weights store.

The feature table must have been extracted with this node's feature schema: a model
trained on other features would be refused by the node anyway, so training refuses first.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.feature_schema import FeatureSchema, SchemaMismatch, check
from inference.fusion.trained import Bundle, calibrator_file, model_file
from inference.weights_store import ModelEntry
from training import card as model_card
from training.labels import join, read_labels
from training.register import next_version, register
from training.table import FeatureTable
from training.train import TrainingResult, TrainOptions, train


@dataclass(frozen=True)
class Request:
    features: Path
    labels: Path
    store: Path
    name: str = "site-fusion"
    version: str | None = None
    pathology: str | None = None
    id_column: str | None = None
    ignore_unknown_labels: bool = False
    options: TrainOptions = field(default_factory=TrainOptions)


@dataclass(frozen=True)
class Outcome:
    result: TrainingResult
    card: dict[str, Any]
    entries: tuple[ModelEntry, ModelEntry]
    card_files: tuple[Path, ...]


def min_per_class(folds: int) -> int:
    """Studies of each class needed: one per fold, and two in every training part (the
    early-stopping split is stratified), i.e. at least ceil(2 k / (k - 1))."""
    return max(folds, math.ceil(2 * folds / (folds - 1)))


def train_and_register(request: Request, node_schema: FeatureSchema) -> Outcome:
    """Train, write the model card, register the model; ``ValueError`` subclasses
    (``TableError``, ``LabelError``, ``SchemaMismatch``) say what is wrong with the inputs."""
    table = FeatureTable.read(request.features)
    try:
        check(table.schema, node_schema, what=f"{request.features.name}")
    except SchemaMismatch as exc:
        raise SchemaMismatch(
            exc.reason,
            f"{exc} (the features must come from the analyzers this node runs)",
        ) from exc
    labels = read_labels(request.labels, request.pathology, request.id_column)
    cohort = join(
        table,
        labels,
        ignore_unknown=request.ignore_unknown_labels,
        min_per_class=min_per_class(request.options.folds),
    )
    result = train(cohort.x, cohort.y, node_schema, request.options)
    version = request.version or next_version(request.store, request.name)
    model_sha = hashlib.sha256(result.model_text.encode("utf-8")).hexdigest()
    bundle = Bundle(
        name=request.name,
        version=version,
        model_sha256=model_sha,
        schema=node_schema,
        calibrator=result.calibrator,
        threshold=result.threshold,
        threshold_rule=request.options.threshold_rule,
        pathology=labels.pathology,
    )
    entries = register(request.store, result.model_text, bundle)
    n = len(cohort.y)
    data = {
        "pathology": labels.pathology,
        "labels_file": request.labels.name,
        "labels_format": labels.format,
        "id_column": labels.id_column,
        "features_file": request.features.name,
        "studies": n,
        "positives": cohort.positives,
        "negatives": n - cohort.positives,
        "prevalence": cohort.positives / n,
        "unlabelled_rows": cohort.unlabelled_rows,
        "unknown_labels": len(cohort.unknown_label_lines),
        "missing_fraction": float(np.isnan(cohort.x).mean()) if cohort.x.size else 0.0,
    }
    card = model_card.build(
        result,
        name=request.name,
        version=version,
        schema_version=node_schema.version,
        n_features=len(node_schema.names),
        data=data,
        files={
            "model": {"file": model_file(request.name), "sha256": entries[0].sha256},
            "calibrator": {"file": calibrator_file(request.name), "sha256": entries[1].sha256},
        },
    )
    model_card.write(card, result, request.store, list(node_schema.names))
    figures = model_card.figure_files(request.name).values()
    written = (
        request.store / f"{request.name}.card.json",
        request.store / f"{request.name}.card.md",
        *(request.store / f for f in figures),
    )
    return Outcome(result, card, entries, written)
