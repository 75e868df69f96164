"""The legacy REST result (DESIGN.md, "Outputs"): the fields existing scripts read, plus each
analyzer's scores and, when a trained fusion ran, the top SHAP contributions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from inference.findings import Analysis


def success(analysis: Analysis, seconds: float, **extra: Any) -> dict[str, Any]:
    fusion = analysis.fusion
    return {
        "study_uid": analysis.study_uid,
        "series_uid": analysis.series_uid,
        "probability_of_pathology": fusion.probability_of_pathology,
        "pathology": int(fusion.pathology),
        "most_dangerous_pathology_type": fusion.most_dangerous_pathology_type,
        "processing_status": "Success",
        "time_of_processing": round(seconds, 2),
        "error": None,
        "fusion": {
            "method": fusion.method,
            "version": fusion.version,
            "calibrated": fusion.calibrated,
        },
        "analyzers": {
            r.analyzer: {
                "version": r.version,
                "probabilities": {
                    f.label: f.score
                    for f in r.findings
                    if f.score is not None and f.location is None
                },
                "calibrated": any(f.calibrated for f in r.findings),
            }
            for r in analysis.results
        },
        "top_shap_features": [
            {"feature": name, "value": value, "shap_value": shap}
            for name, value, shap in fusion.top_features
        ],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def failure(
    error: str,
    seconds: float,
    study_uid: str | None = None,
    series_uid: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "study_uid": study_uid,
        "series_uid": series_uid,
        "probability_of_pathology": None,
        "pathology": None,
        "most_dangerous_pathology_type": None,
        "processing_status": "Failure",
        "time_of_processing": round(seconds, 2),
        "error": error,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }
