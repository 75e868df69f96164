"""Named numeric features every analyzer publishes, under a versioned schema: what the
trained fusion model reads.

A feature schema is the ordered list of the feature names of the analyzers the node runs,
each analyzer's set carrying a version that changes whenever a name is added, removed or
changes meaning. A fusion model stores the schema it was trained on and the node refuses a
model whose schema differs from its own (:func:`check`): a tree that splits on a feature
that is absent, or that now measures something else, gives wrong probabilities silently.

A missing analyzer (not run, failed) and a feature an analyzer could not measure give NaN,
never 0: "0 % emphysema" is a measurement, an absent measurement is not, and LightGBM sends
missing values down the branch it learnt for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.findings import AnalyzerResult


@dataclass(frozen=True)
class Feature:
    """One named number in UCUM ``unit``; ``label`` is the finding type it measures (shared
    vocabulary), if any: the trained fusion uses it to name the most dangerous pathology
    type."""

    name: str
    label: str | None = None
    unit: str = "1"


@dataclass(frozen=True)
class FeatureSet:
    """The features one analyzer publishes, in a fixed order, with their version."""

    analyzer: str
    version: str
    features: tuple[Feature, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)


class SchemaMismatch(ValueError):
    """A feature schema that is not the node's; ``reason`` is ``missing-analyzers`` or
    ``schema-mismatch``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FeatureSchema:
    """The ordered features of a set of analyzers; ``version`` names them and their
    feature-set versions, e.g. ``quantitative-1``."""

    sets: tuple[FeatureSet, ...]

    @property
    def version(self) -> str:
        return "+".join(f"{s.analyzer}-{s.version}" for s in self.sets)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for s in self.sets for name in s.names)

    @property
    def labels(self) -> dict[str, str | None]:
        return {f.name: f.label for s in self.sets for f in s.features}

    @property
    def units(self) -> dict[str, str]:
        return {f.name: f.unit for s in self.sets for f in s.features}

    def values(self, results: Sequence[AnalyzerResult]) -> dict[str, float]:
        """Every schema feature from ``results``, NaN where an analyzer or a value is missing."""
        by_analyzer = {r.analyzer: r for r in results}
        values: dict[str, float] = {}
        for feature_set in self.sets:
            result = by_analyzer.get(feature_set.analyzer)
            published = result.features if result is not None else {}
            for name in feature_set.names:
                values[name] = as_float(published.get(name))
        return values

    def vector(self, results: Sequence[AnalyzerResult]) -> npt.NDArray[np.float64]:
        """The features as one row, in schema order (what the model's columns are)."""
        values = self.values(results)
        return np.array([values[name] for name in self.names], dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "analyzers": [
                {
                    "analyzer": s.analyzer,
                    "version": s.version,
                    "features": [
                        {"name": f.name, "label": f.label, "unit": f.unit} for f in s.features
                    ],
                }
                for s in self.sets
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureSchema:
        """Parse what :meth:`to_json` wrote; ``ValueError`` with a sentence if malformed."""
        try:
            sets = tuple(
                FeatureSet(
                    str(s["analyzer"]),
                    str(s["version"]),
                    tuple(
                        Feature(str(f["name"]), f.get("label"), str(f.get("unit", "1")))
                        for f in s["features"]
                    ),
                )
                for s in data["analyzers"]
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed feature schema: {exc!r}") from exc
        schema = cls(sets)
        if data.get("version", schema.version) != schema.version:
            raise ValueError(
                f"feature schema says version {data.get('version')!r} "
                f"but its analyzers make {schema.version!r}"
            )
        return schema


def check(trained: FeatureSchema, node: FeatureSchema, what: str = "the fusion model") -> None:
    """Raise :class:`SchemaMismatch` unless ``trained`` is exactly the node's schema, with a
    message naming the analyzers and features that differ and what to do about it."""
    if trained.names == node.names and trained.version == node.version:
        return
    runs = {s.analyzer for s in node.sets}
    absent = [s.analyzer for s in trained.sets if s.analyzer not in runs]
    if absent:
        raise SchemaMismatch(
            "missing-analyzers",
            f"{what} needs features of analyzer(s) {', '.join(absent)}, which this node does "
            f"not run (it runs: {', '.join(sorted(runs)) or 'none'}); enable them or train a "
            "model on this node's features",
        )
    missing = [n for n in trained.names if n not in set(node.names)]
    extra = [n for n in node.names if n not in set(trained.names)]
    parts = [f"{what} was trained on feature schema {trained.version!r}, this node publishes "]
    parts.append(f"{node.version!r}")
    if missing:
        parts.append(f"; features the node no longer publishes: {_some(missing)}")
    if extra:
        parts.append(f"; features the model does not know: {_some(extra)}")
    if not missing and not extra:
        parts.append("; the feature order or an analyzer's feature version differs")
    parts.append(". Extract the features again (ctnode features) and retrain (ctnode fusion train)")
    raise SchemaMismatch("schema-mismatch", "".join(parts))


def as_float(value: object) -> float:
    """A feature value as float; None, non-numbers and non-finite values become NaN."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
        return number if math.isfinite(number) else float("nan")
    return float("nan")


def json_ready(values: Mapping[str, float]) -> dict[str, float | None]:
    """Features for JSON: NaN (not valid JSON) becomes null."""
    return {k: (None if math.isnan(v) else v) for k, v in values.items()}


def _some(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
