"""The quantitative analyzer: segmentation, densitometry and nodule candidates turned into
findings of the shared vocabulary.

Scores are rule-based, not calibrated probabilities: each is a logistic function of one
measurement, 0.5 at the stated threshold (monotone: more disease, higher score):

- Emphysema: LAA%-950 (noise-corrected), threshold 6 %, width 1.5. Upper limit of normal
  5-6 % (Gevenois et al. 1996; Mets et al., Eur Radiol 2012;22:120).
- Lung opacity: percentage of opacity (-700 to +50 HU, vessels and the envelope's rim
  excluded: ``densitometry.excluded``), threshold 5 %, width 1. With vessels counted the
  normal test CT read 13 % and the threshold had to sit at 20 %; without them it reads about
  3 % (dependent density and what the vessel filter misses) and the pneumonia CT about 9 %
  (cf. Chaganti et al. 2020, where normal lungs score near 0 %). Provisional: set between
  the two reference CTs, to be checked on a labelled set.
- Consolidation: consolidation range (-300 to +50 HU, same exclusions), threshold 0.5 %,
  width 0.1. Non-contrast vessels lie in this range, so with vessels counted normal lungs
  gave 2-3 %; without them the normal CT gives about 0.2 % and the pneumonia CT about
  0.85 %. Provisional like the opacity threshold.
- Lung nodule: a candidate's diameter, threshold 6 mm, width 1.5. The Fleischner Society's
  follow-up threshold for solid nodules (MacMahon et al., Radiology 2017;284:228). Scaled
  by ``CANDIDATE_CONFIDENCE`` (0.9): a shape-filter candidate is not a confirmed nodule
  (classical dot-filter CAD runs at several false positives per scan, Li et al. 2003), so
  no candidate claims certainty, while a measured volume of diseased lung can.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from inference import codes
from inference.feature_schema import Feature, FeatureSet
from inference.findings import AnalyzerResult, Code, Finding, Measurement, label_code
from inference.quant import densitometry, nodules
from inference.quant.segmentation import LungMasks, segment
from inference.volume import Volume

NAME = "quantitative"
VERSION = "1.1.0"

EMPHYSEMA = label_code("Emphysema")
CONSOLIDATION = label_code("Consolidation")
LUNG_OPACITY = label_code("Lung opacity")
LUNG_NODULE = label_code("Lung nodule")


@dataclass(frozen=True)
class Rule:
    threshold: float
    width: float

    def score(self, value: float) -> float:
        if math.isnan(value):
            return 0.0
        return 1.0 / (1.0 + math.exp(-(value - self.threshold) / self.width))


RULES = {
    "Emphysema": Rule(6.0, 1.5),
    "Lung opacity": Rule(5.0, 1.0),
    "Consolidation": Rule(0.5, 0.1),
    "Lung nodule": Rule(6.0, 1.5),
}
# the unit of the measurement each rule reads
RULE_UNITS = {"Emphysema": "%", "Lung opacity": "%", "Consolidation": "%", "Lung nodule": "mm"}
CANDIDATE_CONFIDENCE = 0.9

# The features the fusion model reads: every densitometry measurement per region, then the
# nodule candidates. Bump FEATURES_VERSION when a name or a meaning changes (not for a
# change that only makes the same measurement faster): trained fusion models then refuse
# to load until retrained.
FEATURES_VERSION = "2"  # 2: vessels and the rim left out of the opacity ranges
REGIONS = ("both lungs", "left lung", "right lung", "lower third", "middle third", "upper third")
MEASUREMENT_LABELS: dict[str, str | None] = {
    "Lung volume": None,
    "Mean lung density": None,
    "LAA%-950": "Emphysema",
    "Perc15": "Emphysema",
    "HAA% (-600 to -250 HU)": "Lung opacity",
    "Ground-glass range volume": "Lung opacity",
    "Ground-glass range": "Lung opacity",
    "Consolidation range volume": "Consolidation",
    "Consolidation range": "Consolidation",
    "Percentage of opacity": "Lung opacity",
    "Vessel volume": None,
}
NODULE_FEATURES = (
    Feature("quant.nodule.max_diameter_mm", "Lung nodule", "mm"),
    Feature("quant.nodule.count", "Lung nodule"),
    Feature("quant.smoothed"),
)


def feature_name(region: str, measurement: str) -> str:
    """``quant.<region>.<measurement>`` in lower case, runs of other characters as ``_``."""
    slug = [re.sub(r"[^a-z0-9]+", "_", part.lower()).strip("_") for part in (region, measurement)]
    return f"quant.{slug[0]}.{slug[1]}"


# How a person reads each feature (the names drop the signs of "-600 to -250 HU").
FEATURE_TITLES = {
    feature_name(region, name): f"{name} ({region})"
    for region in REGIONS
    for name in MEASUREMENT_LABELS
}

# names and units as densitometry reports them (a region of no voxels lists them all)
_UNITS = {m.name: m.unit for m in densitometry.empty_region("").measurements()}
FEATURE_SET = FeatureSet(
    NAME,
    FEATURES_VERSION,
    tuple(
        Feature(feature_name(region, name), label, _UNITS[name])
        for region in REGIONS
        for name, label in MEASUREMENT_LABELS.items()
    )
    + NODULE_FEATURES,
)


class QuantitativeAnalyzer:
    """The quantitative analyzer as an ``inference.analyzer.Analyzer[Volume]``: no weights;
    ``sharp_kernel`` (the series was reconstructed with a lung kernel: smooth before
    densitometry) and ``max_nodules`` are fixed per series."""

    name = NAME
    version = VERSION
    weights_sha256: tuple[str, ...] = ()

    def __init__(self, *, sharp_kernel: bool, max_nodules: int = 5) -> None:
        self.sharp_kernel = sharp_kernel
        self.max_nodules = max_nodules

    def analyze(self, volume: Volume, /) -> AnalyzerResult:
        return analyze(volume, sharp_kernel=self.sharp_kernel, max_nodules=self.max_nodules)


def analyze(volume: Volume, *, sharp_kernel: bool, max_nodules: int = 5) -> AnalyzerResult:
    """Findings, measurements and features of ``volume``, with the lung masks and the
    overlays (emphysema, ground glass, consolidation) as the result's masks."""
    masks = segment(volume)
    values = densitometry.values_for(volume, sharp_kernel=sharp_kernel)
    # nodule search and densitometry are independent: one thread each (numpy and
    # scipy.ndimage release the GIL), so both cores work
    with ThreadPoolExecutor(max_workers=1) as pool:
        searching = pool.submit(nodules.find, volume, masks, values, limit=max_nodules)
        density = densitometry.measure(volume, masks, sharp_kernel=sharp_kernel, values=values)
        candidates = searching.result()
    lungs = masks.lungs
    emphysema = lungs & (values < densitometry.LAA_HU)
    countable = lungs & ~density.excluded
    ggo = countable & (values >= densitometry.GGO_RANGE[0]) & (values < densitometry.GGO_RANGE[1])
    consolidation = (
        countable
        & (values >= densitometry.CONSOLIDATION_RANGE[0])
        & (values <= densitometry.CONSOLIDATION_RANGE[1])
    )
    total = density.total
    findings = [
        _finding(
            "Emphysema",
            EMPHYSEMA,
            total.laa950_percent,
            emphysema,
            f"LAA%-950 {total.laa950_percent:.1f} %, Perc15 {total.perc15_hu:.0f} HU",
            _pick(total.measurements(), "LAA%-950", "Perc15"),
        ),
        _finding(
            "Lung opacity",
            LUNG_OPACITY,
            total.opacity_percent,
            ggo | consolidation,
            f"{total.opacity_percent:.1f} % of lung volume in the -700 to +50 HU range "
            "(vessels excluded)",
            _pick(
                total.measurements(),
                "Percentage of opacity",
                "Ground-glass range",
                "Ground-glass range volume",
                "Vessel volume",
            ),
        ),
        _finding(
            "Consolidation",
            CONSOLIDATION,
            total.consolidation_percent,
            consolidation,
            f"{total.consolidation_ml:.0f} mL in the -300 to +50 HU range (vessels excluded)",
            _pick(total.measurements(), "Consolidation range", "Consolidation range volume"),
        ),
        *_nodule_findings(candidates, masks),
    ]
    measurements = tuple(m for region in density.regions.values() for m in region.measurements())
    features = {feature_name(m.region, m.name): float(m.value) for m in measurements}
    features["quant.nodule.max_diameter_mm"] = max(
        (c.diameter_mm for c in candidates), default=float("nan")
    )
    features["quant.nodule.count"] = float(len(candidates))
    features["quant.smoothed"] = 1.0 if density.smoothed else 0.0
    overlay = {
        "lung_left": masks.left,
        "lung_right": masks.right,
        "emphysema": emphysema,
        "ground_glass": ggo,
        "consolidation": consolidation,
    }
    return AnalyzerResult(
        NAME,
        VERSION,
        tuple(findings),
        measurements,
        features,
        features_version=FEATURES_VERSION,
        masks=overlay,
    )


def _finding(
    label: str,
    code: Code,
    value: float,
    mask: npt.NDArray[np.bool_],
    description: str,
    measurements: tuple[Measurement, ...],
) -> Finding:
    rule = RULES[label]
    score = rule.score(value)
    return Finding(
        label=label,
        code=code,
        analyzer=NAME,
        score=round(score, 4),
        calibrated=False,
        present=score >= 0.5,
        measurements=measurements,
        key_slice=_key_slice(mask),
        description=description + " (rule-based score)",
        threshold=Measurement(f"{label} threshold", rule.threshold, RULE_UNITS[label]),
    )


def _nodule_findings(candidates: list[nodules.NoduleCandidate], masks: LungMasks) -> list[Finding]:
    if not candidates:
        return [
            Finding(
                label="Lung nodule",
                code=LUNG_NODULE,
                analyzer=NAME,
                score=0.0,
                description="no nodule candidate (rule-based score)",
            )
        ]
    findings = []
    for number, c in enumerate(candidates, start=1):
        size_score = RULES["Lung nodule"].score(c.diameter_mm)
        score = CANDIDATE_CONFIDENCE * size_score
        findings.append(
            Finding(
                label="Lung nodule",
                code=LUNG_NODULE,
                analyzer=NAME,
                score=round(score, 4),
                present=size_score >= 0.5,
                key_slice=c.slice_index,
                location=c.centre,
                measurements=(
                    Measurement("Diameter", c.diameter_mm, "mm"),
                    Measurement("Volume", round(c.volume_ml * 1000, 1), "mm3"),
                    Measurement("Mean density", c.mean_hu, "[hnsf'U]"),
                ),
                description=f"candidate {number}: {c.diameter_mm:.1f} mm, mean {c.mean_hu:.0f} HU "
                "(rule-based score)",
                threshold=Measurement(
                    "Lung nodule threshold", RULES["Lung nodule"].threshold, "mm"
                ),
                laterality=_side(masks, c.voxel),
                zone=_zone(masks, c.voxel[0]),
            )
        )
    return findings


def _side(masks: LungMasks, voxel: tuple[int, int, int]) -> Code | None:
    """The lung the candidate lies in (the envelope that holds its centre)."""
    if masks.left[voxel]:
        return codes.LEFT
    if masks.right[voxel]:
        return codes.RIGHT
    return None


def _zone(masks: LungMasks, z: int) -> Code:
    """Upper, middle or lower zone: thirds of the lungs' craniocaudal extent (z grows
    upwards, as ``densitometry`` splits the regions)."""
    zs = np.flatnonzero(masks.lungs.any(axis=(1, 2)))
    if zs.size == 0:
        return codes.MIDDLE_ZONE
    third = (z - zs.min()) / max(1, zs.max() + 1 - zs.min())
    return (
        codes.LOWER_ZONE
        if third < 1 / 3
        else codes.MIDDLE_ZONE
        if third < 2 / 3
        else codes.UPPER_ZONE
    )


def _key_slice(mask: npt.NDArray[np.bool_]) -> int | None:
    """The slice that shows the finding best: the largest affected area."""
    areas = mask.sum(axis=(1, 2))
    return int(np.argmax(areas)) if areas.max() > 0 else None


def _pick(measurements: tuple[Measurement, ...], *names: str) -> tuple[Measurement, ...]:
    """The named measurements in the order named (the report shows the first one first)."""
    return tuple(m for name in names for m in measurements if m.name == name)
