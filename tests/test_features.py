"""Feature schema: what analyzers publish, NaN for what is missing, clear mismatch errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from inference import ensemble
from inference.feature_schema import Feature, FeatureSchema, FeatureSet, SchemaMismatch, check
from inference.findings import AnalyzerResult
from inference.loading import load_series
from inference.quant import analyzer as quantitative
from reporting import legacy_json
from tests.phantoms import chest_phantom


def test_quantitative_analyzer_publishes_exactly_its_feature_set(tmp_path: Path) -> None:
    volume = load_series(chest_phantom(tmp_path, "features", lesion_mm=20.0))
    analysis = ensemble.Ensemble().run(volume, sharp_kernel=False)
    (result,) = analysis.results
    assert tuple(result.features) == quantitative.FEATURE_SET.names
    assert result.features_version == quantitative.FEATURES_VERSION
    assert set(quantitative.MEASUREMENT_LABELS) == {
        m.name for m in result.measurements if m.region == "both lungs"
    }
    schema = ensemble.feature_schema()
    row = schema.vector(analysis.results)
    assert row.shape == (len(schema.names),) and schema.version == "quantitative-2"
    opacity = schema.names.index("quant.both_lungs.ground_glass_range")
    assert row[opacity] > 0.1  # the 20 mm ground-glass lesion (4 mL) is measured
    # no nodule candidate: its diameter is missing (NaN), the count is a real 0
    assert math.isnan(result.features["quant.nodule.max_diameter_mm"])
    assert result.features["quant.nodule.count"] == 0.0
    # the legacy JSON carries the features, NaN as null (valid JSON)
    doc = legacy_json.success(analysis, time_of_processing=0.1, report_uids={})
    text = json.dumps(doc, allow_nan=False)
    features = json.loads(text)["analyzers"][0]["features"]
    assert features["quant.nodule.max_diameter_mm"] is None
    assert doc["fusion"]["method"] == "rule-based" and doc["fusion"]["threshold"] == 0.5


def _schema(*sets: tuple[str, str, tuple[str, ...]]) -> FeatureSchema:
    return FeatureSchema(
        tuple(FeatureSet(a, v, tuple(Feature(n) for n in names)) for a, v, names in sets)
    )


def test_missing_analyzer_gives_nan_never_zero() -> None:
    schema = _schema(("quantitative", "1", ("q.a", "q.b")), ("ctclip", "1", ("c.x",)))
    results = [AnalyzerResult("quantitative", "1.0.0", features={"q.a": 0.0, "q.b": 2.5})]
    row = schema.vector(results)
    assert row[0] == 0.0 and row[1] == 2.5 and math.isnan(row[2])
    assert np.isnan(schema.vector([])).all()


def test_schema_round_trips_and_mismatches_are_named() -> None:
    node = _schema(("quantitative", "1", ("q.a", "q.b")))
    assert FeatureSchema.from_json(node.to_json()) == node
    check(node, node)
    with pytest.raises(SchemaMismatch, match="analyzer\\(s\\) ctclip, which this node") as exc:
        check(_schema(("quantitative", "1", ("q.a", "q.b")), ("ctclip", "1", ("c.x",))), node)
    assert exc.value.reason == "missing-analyzers"
    with pytest.raises(SchemaMismatch, match=r"no longer publishes: q\.old") as exc:
        check(_schema(("quantitative", "0", ("q.a", "q.old"))), node)
    assert exc.value.reason == "schema-mismatch" and "does not know: q.b" in str(exc.value)
    with pytest.raises(ValueError, match="malformed feature schema"):
        FeatureSchema.from_json({"analyzers": [{"analyzer": "q"}]})
