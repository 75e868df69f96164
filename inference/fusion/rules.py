"""Fusion: every analyzer's findings -> the overall result (the legacy JSON's
``probability_of_pathology``, ``pathology`` and ``most_dangerous_pathology_type``).

``FusionModel`` is the interface; ``RuleBasedFusion`` is the default and says plainly that
its output is a rule-based score; a site-trained LightGBM model (``inference.fusion.trained``)
replaces it when ``[fusion] model`` names one. ``load_fusion`` is the one place the node
and ``ctnode analyze`` get their fusion from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from inference.findings import AnalyzerResult, Finding, Fusion

if TYPE_CHECKING:
    from config import Settings
    from inference.feature_schema import FeatureSchema

NO_PATHOLOGY = "No significant pathology"
UNSPECIFIED = "Unspecified abnormality"
# A finding type competes for "most dangerous" under a trained model only if its features
# pushed the decision towards pathology by at least this share of all positive pushes.
MIN_CONTRIBUTION_SHARE = 0.1

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
    """The overall score is the highest finding score of ``analyzers``; ``pathology`` when
    it reaches the threshold; the most dangerous type is the most severe finding at or
    above it. Other analyzers' findings are reported but do not decide (``[fusion]
    rule_analyzers``: only scores whose 0.5 means something belong here)."""

    name = "rule-based"
    version = "1.0.0"

    def __init__(
        self, threshold: float = 0.5, analyzers: Sequence[str] = ("quantitative",)
    ) -> None:
        self.threshold = threshold
        self.analyzers = tuple(analyzers)

    def fuse(self, results: Sequence[AnalyzerResult]) -> Fusion:
        findings = [
            f
            for r in results
            if r.analyzer in self.analyzers
            for f in r.findings
            if f.score is not None
        ]
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
    labels = _by_severity({f.label for f in findings})
    return labels[0] if labels else NO_PATHOLOGY


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
    eligible = _by_severity({k for k, c in positive.items() if c >= MIN_CONTRIBUTION_SHARE * total})
    return eligible[0] if eligible else None


def _by_severity(labels: set[str]) -> list[str]:
    rank = {label: i for i, label in enumerate(SEVERITY)}
    return sorted(labels, key=lambda label: (rank.get(label, len(rank)), label))


def load_fusion(settings: Settings, schema: FeatureSchema) -> FusionModel:
    """The fusion ``settings`` ask for: the trained model named by ``[fusion] model`` (from
    the weights store, verified, its feature schema checked against this node's analyzers),
    else the rule-based fusion with ``[fusion] threshold``.

    Raises ``inference.fusion.trained.FusionModelError`` (a ``ValueError``) with a sentence
    when the named model cannot be used: the node must not silently fall back to rules a
    site did not choose.
    """
    if not settings.fusion.model:
        return RuleBasedFusion(settings.fusion.threshold, settings.fusion.rule_analyzers)
    from pathlib import Path

    from inference.fusion.trained import load

    return load(
        Path(settings.neural.weights_dir),
        settings.fusion.model,
        schema,
        top_k=settings.fusion.top_k,
    )
