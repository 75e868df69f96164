"""Analysis -> the legacy REST JSON shape (DESIGN.md, "Outputs/JSON").

Legacy fields, exactly: ``study_uid``, ``series_uid``, ``probability_of_pathology``,
``pathology`` (0/1), ``most_dangerous_pathology_type``, ``processing_status``
(``Success``/``Failure``), ``time_of_processing`` (seconds), ``error``; then
``top_shap_features`` (empty unless a trained fusion model ran), ``fusion`` (which fusion
ran: method, version, sha256 of its files, calibrated or not, threshold), per-analyzer
results (``analyzers``, with the named ``features`` a fusion model reads, missing ones as
null) and the SOP Instance UIDs of the DICOM objects written for this result
(``report_sop_instance_uids``). Every neural analyzer
(``inference.neural``) has ``<analyzer>_probabilities``, its labels -> P(present), null
when it did not run (``<analyzer>_scores`` where its scores are not probabilities, as the
anomaly detector's): ``ctclip_probabilities`` (and ``ctclip_supervised_probabilities`` for
ClassFine) map the 18 CT-RATE labels to CT-CLIP's; ``analyzers_not_run`` says which
analyzers of the ensemble gave no result and why.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from inference.feature_schema import json_ready
from inference.findings import Analysis
from inference.neural import SPECS

LEGACY_FIELDS: tuple[str, ...] = (
    "study_uid",
    "series_uid",
    "probability_of_pathology",
    "pathology",
    "most_dangerous_pathology_type",
    "processing_status",
    "time_of_processing",
    "error",
)


def success(
    analysis: Analysis,
    *,
    time_of_processing: float,
    report_uids: Mapping[str, str | Sequence[str]],
) -> dict[str, Any]:
    """The JSON for a successful analysis; ``report_uids`` maps object kind to SOP UID(s)."""
    fusion = analysis.fusion
    return {
        "study_uid": analysis.study_uid,
        "series_uid": analysis.series_uid,
        "probability_of_pathology": round(float(fusion.probability_of_pathology), 6),
        "pathology": 1 if fusion.pathology else 0,
        "most_dangerous_pathology_type": fusion.most_dangerous_pathology_type,
        "processing_status": "Success",
        "time_of_processing": round(float(time_of_processing), 3),
        "error": None,
        "top_shap_features": [
            {"feature": name, "value": json_ready({name: value})[name], "shap": shap}
            for name, value, shap in fusion.top_features
        ],
        "fusion": {
            "method": fusion.method,
            "version": fusion.version,
            "weights_sha256": list(fusion.weights_sha256),
            "calibrated": fusion.calibrated,
            "threshold": fusion.threshold,
        },
        "analyzers": [
            {
                "analyzer": r.analyzer,
                "version": r.version,
                "weights_sha256": list(r.weights_sha256),
                "features_version": r.features_version,
                "features": json_ready(r.features),
                "notes": list(r.notes),
                "findings": [
                    {
                        "label": f.label,
                        "score": f.score,
                        "calibrated": f.calibrated,
                        "present": f.present,
                        "measurements": [
                            {"name": m.name, "value": m.value, "unit": m.unit, "region": m.region}
                            for m in f.measurements
                        ],
                    }
                    for f in r.findings
                ],
            }
            for r in analysis.results
        ],
        **{scores_key(s.name, s.probabilities): _scores(analysis, s.name) for s in SPECS},
        "analyzers_not_run": [{"analyzer": a, "reason": why} for a, why in analysis.not_run],
        "report_sop_instance_uids": {
            k: (v if isinstance(v, str) else list(v)) for k, v in report_uids.items()
        },
    }


def scores_key(analyzer: str, probabilities: bool = True) -> str:
    """``ctclip-supervised`` -> ``ctclip_supervised_probabilities``; an analyzer whose scores
    are not probabilities -> ``diffusion_anomaly_scores``."""
    return f"{analyzer.replace('-', '_')}_{'probabilities' if probabilities else 'scores'}"


def _scores(analysis: Analysis, analyzer: str) -> dict[str, float | None] | None:
    """The legacy ``ctclip_probabilities`` shape: label -> score; null when the analyzer did
    not run."""
    for result in analysis.results:
        if result.analyzer == analyzer:
            return {f.label: f.score for f in result.findings}
    return None


def failure(
    study_uid: str, series_uid: str, error: str, *, time_of_processing: float
) -> dict[str, Any]:
    """The JSON for a failed analysis: status ``Failure``, the error, null results."""
    return {
        "study_uid": study_uid,
        "series_uid": series_uid,
        "probability_of_pathology": None,
        "pathology": None,
        "most_dangerous_pathology_type": None,
        "processing_status": "Failure",
        "time_of_processing": round(float(time_of_processing), 3),
        "error": error,
        "top_shap_features": None,
        "fusion": None,
        "analyzers": None,
        **{scores_key(s.name, s.probabilities): None for s in SPECS},
        "analyzers_not_run": None,
        "report_sop_instance_uids": None,
    }


def write(result: Mapping[str, Any], path: Path) -> Path:
    """Write ``result`` as UTF-8 JSON (atomically: temp file then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
