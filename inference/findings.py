"""What analysis hands to reporting: findings with codes, scores, measurements, locations.

The vocabulary is shared by every analyzer (DESIGN.md, "Findings model"): the 18 CT-RATE
abnormality labels. Reporting turns these values into SR content items, SC tables and the
legacy JSON without knowing which analyzer produced them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from inference.codes import CT_RATE_LABELS as CT_RATE_LABELS
from inference.codes import PRIVATE_SCHEME as PRIVATE_SCHEME
from inference.codes import Code as Code
from inference.codes import label_code as label_code

# What the overall result says when nothing is pathological, and when a trained model finds
# pathology that no finding type explains (both fusions).
NO_PATHOLOGY = "No significant pathology"
UNSPECIFIED = "Unspecified abnormality"

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


@dataclass(frozen=True)
class Measurement:
    """A named quantity with UCUM units, optionally restricted to a region (e.g. left lung)."""

    name: str
    value: float
    unit: str
    code: Code | None = None
    region: str = ""


@dataclass(frozen=True)
class Finding:
    """One abnormality from the shared vocabulary as one analyzer saw it.

    ``score`` is in [0, 1]; ``calibrated`` says whether it is a probability or a
    rule-based score. ``location`` is a point in patient coordinates (LPS, mm), e.g. a
    nodule centre; ``key_slice`` the z index of the volume that shows the finding best.
    ``threshold`` is the value at which the finding counts as present (of the score, or of
    the measurement the score is made from); ``laterality`` and ``zone`` place a located
    finding in the lungs (codes of ``inference.codes``).
    """

    label: str
    code: Code
    analyzer: str
    score: float | None = None
    calibrated: bool = False
    present: bool = False
    measurements: tuple[Measurement, ...] = ()
    key_slice: int | None = None
    location: tuple[float, float, float] | None = None
    description: str = ""
    threshold: Measurement | None = None
    laterality: Code | None = None
    zone: Code | None = None

    def __post_init__(self) -> None:
        if self.score is not None and not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score of {self.label!r} must be in [0, 1], got {self.score}")


@dataclass(frozen=True, eq=False)
class SliceMap:
    """A continuous map an analyzer computed on some axial slices (the diffusion anomaly
    map): ``values`` (len(slices), y, x) on the volume's grid for the z indices ``slices``;
    reporting draws it as a colour overlay whose full colour is ``scale``, with ``title``
    and ``note`` (e.g. a reduced procedure) in its legend."""

    title: str
    slices: tuple[int, ...]
    values: npt.NDArray[np.float32]
    scale: float
    note: str = ""


@dataclass(frozen=True)
class AnalyzerResult:
    """Everything one analyzer produced for one volume, with its identity for TID 4019.

    ``features`` are the named numbers the trained fusion reads (``inference.feature_schema``),
    under the analyzer's feature-set version ``features_version``. ``masks`` are boolean
    arrays on the volume's grid the analyzer derived (see ``Analysis.masks``); ``maps``
    continuous maps on some of its slices, drawn on key images (``SliceMap``). ``notes`` are
    what a reader must know to read this result (e.g. fVLM scoring the lungs only), written
    into every output beside it.
    """

    analyzer: str
    version: str
    findings: tuple[Finding, ...] = ()
    measurements: tuple[Measurement, ...] = ()
    features: dict[str, float] = field(default_factory=dict)
    weights_sha256: tuple[str, ...] = ()
    features_version: str = ""
    masks: Mapping[str, npt.NDArray[np.bool_]] = field(
        default_factory=dict, compare=False, repr=False
    )
    maps: tuple[SliceMap, ...] = field(default=(), compare=False, repr=False)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fusion:
    """The overall result across analyzers (legacy JSON fields, SR summary).

    ``method`` and ``version`` name the fusion that ran (``rule-based`` or a trained model's
    name), ``weights_sha256`` its files; ``top_features`` are the largest contributions to a
    trained model's decision as (feature, value, SHAP value in log-odds), largest first.
    """

    method: str
    version: str
    probability_of_pathology: float
    pathology: bool
    most_dangerous_pathology_type: str
    calibrated: bool = False
    top_features: tuple[tuple[str, float, float], ...] = ()
    threshold: float | None = None
    weights_sha256: tuple[str, ...] = ()


@dataclass(frozen=True)
class Analysis:
    """The analysis of one series: per-analyzer results, their fusion, and overlay masks.

    ``masks`` are boolean arrays on the analysed volume's grid ``(z, y, x)`` that reporting
    draws on key images. Known names: ``lung_left``, ``lung_right``, ``emphysema``,
    ``ground_glass``, ``consolidation``; other names are drawn with a generic colour.
    ``not_run`` names each analyzer of the ensemble that gave no result, and why (no
    weights, failed on this series): every output says so.
    """

    study_uid: str
    series_uid: str
    results: tuple[AnalyzerResult, ...]
    fusion: Fusion
    masks: Mapping[str, npt.NDArray[np.bool_]] = field(default_factory=dict)
    not_run: tuple[tuple[str, str], ...] = ()

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(f for r in self.results for f in r.findings)


def by_severity(labels: Iterable[str]) -> list[str]:
    """``labels`` most dangerous first (``SEVERITY``; labels outside it last, by name)."""
    rank = {label: i for i, label in enumerate(SEVERITY)}
    return sorted(set(labels), key=lambda label: (rank.get(label, len(rank)), label))


def most_dangerous(findings: Sequence[Finding]) -> str:
    """The most severe label among ``findings``; ``NO_PATHOLOGY`` when there are none."""
    labels = by_severity(f.label for f in findings)
    return labels[0] if labels else NO_PATHOLOGY
