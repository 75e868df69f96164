"""MedNeXt's per-label probabilities as findings of the shared vocabulary and as features.

Torch-free, so that the node's feature schema and reports know the analyzer without loading
a model. The labels come from the model card, so they may differ from site to site; the
fusion features may not (a trained fusion's columns are fixed when it is trained). Hence:

- **Features**: always the seeds' 22 labels (``card.DEFAULT_LABELS``), named
  ``mednext.<label slug>`` (``mednext.lung_nodule``), feature set version 1. A card's label
  among them fills its feature; one of them the card lacks is NaN (not measured, as for an
  analyzer that did not run); a card's label outside them is reported (SR, summary page,
  legacy JSON) but is not a fusion feature.
- **Findings**: every label of the card, in its order, coded by
  ``inference.codes.finding_code`` (CT-RATE and the seeds' extra labels from the table, any
  other label a deterministic private ``CTNL-`` code), present at the card's operating
  threshold for that label, which the SR states.
"""

from __future__ import annotations

from inference.analyzer import NeuralSpec
from inference.codes import THRESHOLD, finding_code
from inference.ctclip.results import slug
from inference.feature_schema import Feature, FeatureSet
from inference.findings import AnalyzerResult, Finding, Measurement
from inference.mednext.card import DEFAULT_LABELS, ModelCard

NAME = "mednext"
TITLE = "MedNeXt"
# Version of the code that turns a volume into these probabilities (preprocessing, head):
# cached features are reused only from the same code and the same weights.
CODE_VERSION = "1"


def feature_name(label: str) -> str:
    """``Lung nodule`` -> ``mednext.lung_nodule``."""
    return f"{NAME}.{slug(label)}"


FEATURE_SET = FeatureSet(
    NAME, "1", tuple(Feature(feature_name(label), label) for label in DEFAULT_LABELS)
)
SPECS = (
    NeuralSpec(
        NAME,
        TITLE,
        FEATURE_SET,
        {feature_name(label): f"{TITLE}: {label}" for label in DEFAULT_LABELS},
        "inference.mednext.analyzer:load",
        needs_masks=True,
    ),
)


def to_result(
    probs: list[float], card: ModelCard, version: str, weights_sha256: tuple[str, ...] = ()
) -> AnalyzerResult:
    """Findings (every card label) and features (the default labels the card has) from the
    head's probabilities in card order; present at each label's threshold."""
    if len(probs) != len(card.labels):
        raise ValueError(f"expected {len(card.labels)} probabilities, got {len(probs)}")
    clipped = [min(1.0, max(0.0, float(p))) for p in probs]
    findings = tuple(
        Finding(
            label,
            finding_code(label),
            NAME,
            score=p,
            present=p >= t,
            threshold=Measurement("Threshold", t, "1", THRESHOLD),
        )
        for label, p, t in zip(card.labels, clipped, card.thresholds, strict=True)
    )
    known = set(DEFAULT_LABELS)
    features = {
        feature_name(label): p
        for label, p in zip(card.labels, clipped, strict=True)
        if label in known
    }
    return AnalyzerResult(
        NAME,
        version,
        findings=findings,
        features=features,
        weights_sha256=weights_sha256,
        features_version=FEATURE_SET.version,
    )
