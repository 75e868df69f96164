"""Fusion: every analyzer's findings -> the overall result (the legacy JSON's
``probability_of_pathology``, ``pathology`` and ``most_dangerous_pathology_type``).

``FusionModel`` is the interface a trained model (LightGBM with SHAP, issue 8) implements;
``RuleBasedFusion`` is the default and says plainly that its output is a rule-based score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from inference.findings import AnalyzerResult, Finding, Fusion

NO_PATHOLOGY = "No significant pathology"

# Most dangerous first: what would change management soonest. An acute airspace process
# (consolidation) before a possible malignancy (nodule) before diffuse opacity before
# chronic emphysema; then the remaining CT-RATE labels the neural analyzers report.
SEVERITY = (
    "Consolidation",
    "Pleural effusion",
    "Pericardial effusion",
    "Lung nodule",
    "Lung opacity",
    "Atelectasis",
    "Lymphadenopathy",
    "Pulmonary fibrotic sequela",
    "Interlobular septal thickening",
    "Bronchiectasis",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Emphysema",
    "Cardiomegaly",
    "Coronary artery wall calcification",
    "Arterial wall calcification",
    "Hiatal hernia",
    "Medical material",
)


class FusionModel(Protocol):
    name: str
    version: str

    def fuse(self, results: Sequence[AnalyzerResult]) -> Fusion: ...


class RuleBasedFusion:
    """The overall score is the highest finding score; ``pathology`` when it reaches the
    threshold; the most dangerous type is the most severe finding at or above it."""

    name = "rule-based"
    version = "1.0.0"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def fuse(self, results: Sequence[AnalyzerResult]) -> Fusion:
        findings = [f for r in results for f in r.findings if f.score is not None]
        probability = max((float(f.score or 0.0) for f in findings), default=0.0)
        positive = [f for f in findings if (f.score or 0.0) >= self.threshold]
        return Fusion(
            method=self.name,
            version=self.version,
            probability_of_pathology=round(probability, 4),
            pathology=probability >= self.threshold,
            most_dangerous_pathology_type=most_dangerous(positive),
            calibrated=False,
            threshold=self.threshold,
        )


def most_dangerous(findings: Sequence[Finding]) -> str:
    rank = {label: i for i, label in enumerate(SEVERITY)}
    labels = sorted({f.label for f in findings}, key=lambda label: rank.get(label, len(rank)))
    return labels[0] if labels else NO_PATHOLOGY
