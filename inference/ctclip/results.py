"""CT-CLIP's 18 probabilities as findings of the shared vocabulary and as fusion features.

Torch-free, so that the node's feature schema and reports know the CT-CLIP analyzers' names
and features without loading a model. Two analyzers of the ensemble come from CT-CLIP
checkpoints: ``ctclip`` (zero-shot: CT-CLIP_v2 or VocabFine_v2 with the prompt pairs) and
``ctclip-supervised`` (ClassFine, CT_LiPro_v2: a classifier on the image latent).
"""

from __future__ import annotations

import re

from inference.analyzer import NeuralSpec
from inference.feature_schema import Feature, FeatureSet
from inference.findings import CT_RATE_LABELS, AnalyzerResult, Finding, label_code

ZERO_SHOT = "ctclip"
SUPERVISED = "ctclip-supervised"
ANALYZERS = (ZERO_SHOT, SUPERVISED)
# Version of the code that turns a volume into these features (preprocessing, scoring):
# cached features are reused only from the same code and the same weights.
CODE_VERSION = "1"
TITLES = {ZERO_SHOT: "CT-CLIP zero-shot", SUPERVISED: "CT-CLIP ClassFine"}


def slug(label: str) -> str:
    """``Lung nodule`` -> ``lung_nodule``."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def feature_name(analyzer: str, label: str) -> str:
    """``ctclip.lung_nodule``, ``ctclip_supervised.lung_nodule``."""
    return f"{analyzer.replace('-', '_')}.{slug(label)}"


def feature_set(analyzer: str) -> FeatureSet:
    """The 18 probabilities, in CT-RATE label order, each labelled with its finding type."""
    return FeatureSet(
        analyzer, "1", tuple(Feature(feature_name(analyzer, lb), lb) for lb in CT_RATE_LABELS)
    )


SPECS = tuple(
    NeuralSpec(
        name,
        TITLES[name],
        feature_set(name),
        {feature_name(name, label): f"{TITLES[name]}: {label}" for label in CT_RATE_LABELS},
        "inference.ctclip.analyzer:load",
    )
    for name in ANALYZERS
)
FEATURE_SETS = {s.name: s.feature_set for s in SPECS}


def to_result(
    probs: list[float],
    analyzer: str,
    version: str,
    weights_sha256: tuple[str, ...] = (),
) -> AnalyzerResult:
    """Findings and features from the 18 probabilities (CT-RATE order). A finding is marked
    present at 0.5; the scores are the model's, not calibrated at this site."""
    if len(probs) != len(CT_RATE_LABELS):
        raise ValueError(f"expected {len(CT_RATE_LABELS)} probabilities, got {len(probs)}")
    clipped = [min(1.0, max(0.0, float(p))) for p in probs]
    findings = tuple(
        Finding(label, label_code(label), analyzer, score=p, present=p >= 0.5)
        for label, p in zip(CT_RATE_LABELS, clipped, strict=True)
    )
    features = {
        feature_name(analyzer, label): p for label, p in zip(CT_RATE_LABELS, clipped, strict=True)
    }
    return AnalyzerResult(
        analyzer,
        version,
        findings=findings,
        features=features,
        weights_sha256=weights_sha256,
        features_version=FEATURE_SETS[analyzer].version,
    )
