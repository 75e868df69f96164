"""fVLM's 16 organ-wise probabilities as findings of the shared vocabulary and fusion features.

Torch-free, so that the node's feature schema and reports know the fVLM analyzer without loading
a model. fVLM scores each CT-RATE label with the organ it belongs to (fVLM.md, "Text encoder and
prompts"): eleven lung labels, three of the heart, one each of the esophagus and the aorta;
Medical material and Lymphadenopathy are not covered. A label whose organ was not scored (no
organ mask: TotalSegmentator's weights are not registered, or the organ is not in the volume)
has no finding and a NaN feature, never a guess; the result's notes say why.
"""

from __future__ import annotations

from collections.abc import Mapping

from inference.analyzer import NeuralSpec
from inference.ctclip.results import slug
from inference.feature_schema import Feature, FeatureSet
from inference.findings import CT_RATE_LABELS, AnalyzerResult, Finding, label_code

NAME = "fvlm"
TITLE = "fVLM zero-shot"
# Version of the code that turns a volume into these features (preprocessing, windows,
# scoring): cached features are reused only from the same code and the same weights.
CODE_VERSION = "1"
ORGANS = ("lung", "heart", "esophagus", "aorta")
# The label each organ scores, in the original's order (mask labels 1-4 are the organs).
ORGAN_LABELS: dict[str, tuple[str, ...]] = {
    "lung": (
        "Emphysema",
        "Atelectasis",
        "Lung nodule",
        "Lung opacity",
        "Pulmonary fibrotic sequela",
        "Pleural effusion",
        "Mosaic attenuation pattern",
        "Peribronchial thickening",
        "Consolidation",
        "Bronchiectasis",
        "Interlobular septal thickening",
    ),
    "heart": ("Cardiomegaly", "Pericardial effusion", "Coronary artery wall calcification"),
    "esophagus": ("Hiatal hernia",),
    "aorta": ("Arterial wall calcification",),
}
ORGAN_OF = {label: organ for organ, labels in ORGAN_LABELS.items() for label in labels}
# The 16 labels, in CT-RATE order.
LABELS = tuple(label for label in CT_RATE_LABELS if label in ORGAN_OF)
# Prompts whose wording is not "Not <label>." / "<label>." (fVLM.md).
_WORDING = {
    "Atelectasis": "Atelectatic",
    "Lung nodule": "Nodule",
    "Lung opacity": "Opacity",
    "Pulmonary fibrotic sequela": "Pulmonary fibrotic",
}
LUNG_ONLY = "lung only, masks: ctnode"


def prompt_pair(label: str) -> tuple[str, str]:
    """(negative, positive) prompts of ``label``, e.g. ("Not Nodule.", "Nodule.")."""
    word = _WORDING.get(label, label)
    return (f"Not {word}.", f"{word}.")


def prompts() -> list[str]:
    """The 32 prompts: negative then positive, labels organ by organ in the original's order."""
    return [p for organ in ORGANS for label in ORGAN_LABELS[organ] for p in prompt_pair(label)]


def feature_name(label: str) -> str:
    """``fvlm.lung_nodule``."""
    return f"{NAME}.{slug(label)}"


FEATURE_SET = FeatureSet(NAME, "1", tuple(Feature(feature_name(lb), lb) for lb in LABELS))
SPECS = (
    NeuralSpec(
        NAME,
        TITLE,
        FEATURE_SET,
        {feature_name(label): f"{TITLE}: {label}" for label in LABELS},
        "inference.fvlm.analyzer:load",
        needs_masks=True,
    ),
)


def to_result(
    probs: Mapping[str, float],
    version: str,
    weights_sha256: tuple[str, ...] = (),
    notes: tuple[str, ...] = (),
) -> AnalyzerResult:
    """Findings and features from the probabilities of the labels that were scored (label ->
    P(positive)); the others are left out (NaN features), ``notes`` say why. A finding is
    marked present at 0.5; the scores are the model's, not calibrated at this site."""
    unknown = sorted(set(probs) - set(LABELS))
    if unknown:
        raise ValueError(f"fVLM does not score {', '.join(unknown)}")
    clipped = {lb: min(1.0, max(0.0, float(probs[lb]))) for lb in LABELS if lb in probs}
    findings = tuple(
        Finding(label, label_code(label), NAME, score=p, present=p >= 0.5)
        for label, p in clipped.items()
    )
    features = {feature_name(label): p for label, p in clipped.items()}
    return AnalyzerResult(
        NAME,
        version,
        findings=findings,
        features=features,
        weights_sha256=weights_sha256,
        features_version=FEATURE_SET.version,
        notes=notes,
    )


def unscored_note(organs: tuple[str, ...], why: str) -> str:
    """``heart, esophagus, aorta not scored (their 5 labels absent): <why>``."""
    n = sum(len(ORGAN_LABELS[o]) for o in organs)
    return f"{', '.join(organs)} not scored (their {n} labels absent): {why}"
