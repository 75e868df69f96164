"""The diffusion anomaly detector's series result as a finding and as fusion features.

Torch-free, so that the feature schema and the reports know the analyzer without loading
it. One finding, "Departure from a healthy reconstruction" (a private code: no standard
concept names it), located at the centre of the largest anomalous region when there is
one: the SR draws it as a TID 1411 group with its SCOORD3D centre, and its score maps the
map's percentile through the card's threshold to 0.5 (rule-based, not a probability).
"""

from __future__ import annotations

from dataclasses import dataclass

from inference import codes
from inference.analyzer import NeuralSpec
from inference.codes import Code
from inference.feature_schema import Feature, FeatureSet
from inference.findings import AnalyzerResult, Finding, Measurement, SliceMap

NAME = "diffusion-anomaly"
TITLE = "Diffusion anomaly"
LABEL = "Departure from a healthy reconstruction"
# Version of the code that turns a volume into these features (slices, window, scoring).
CODE_VERSION = "1"
FEATURE_SET = FeatureSet(
    NAME,
    "1",
    (
        Feature("diffusion_anomaly.score"),
        Feature("diffusion_anomaly.map_percentile"),
        Feature("diffusion_anomaly.anomalous_volume", unit="mL"),
        Feature("diffusion_anomaly.largest_region_volume", unit="mL"),
    ),
)
FEATURE_TITLES = {
    "diffusion_anomaly.score": f"{TITLE}: score (0.5 at the card's threshold)",
    "diffusion_anomaly.map_percentile": f"{TITLE}: map percentile inside the lungs",
    "diffusion_anomaly.anomalous_volume": f"{TITLE}: anomalous volume",
    "diffusion_anomaly.largest_region_volume": f"{TITLE}: largest anomalous region",
}
SPECS = (
    NeuralSpec(
        NAME,
        TITLE,
        FEATURE_SET,
        FEATURE_TITLES,
        "inference.anomaly.analyzer:load",
        needs_masks=True,
        probabilities=False,
    ),
)


@dataclass(frozen=True)
class Summary:
    """What the maps of one series come to (``inference.anomaly.maps.summarise``).

    ``percentile`` of the map inside the lungs and the card's ``threshold`` for it;
    ``volume_ml`` above the card's map level (extrapolated over the skipped slices when
    every k-th slice ran), ``largest_ml`` its largest connected region with ``centre``
    (LPS, mm), ``key_slice``, ``diameter_mm`` (of the sphere of that volume) and the lung
    it lies in; ``slices`` the z indices analysed; ``note`` how the procedure ran when it
    was not the card's (reduced mode)."""

    percentile: float
    threshold: float
    volume_ml: float
    largest_ml: float
    centre: tuple[float, float, float] | None
    key_slice: int | None
    diameter_mm: float
    laterality: Code | None
    slices: tuple[int, ...]
    note: str = ""

    @property
    def score(self) -> float:
        """In [0, 1), 0.5 where the percentile meets the threshold, monotone in between."""
        return self.percentile / (self.percentile + self.threshold)


def to_result(
    summary: Summary,
    version: str,
    weights_sha256: tuple[str, ...] = (),
    maps: tuple[SliceMap, ...] = (),
) -> AnalyzerResult:
    """The finding (located when a region is anomalous), its measurements, the features."""
    reduced = f"; {summary.note}" if summary.note else ""
    measurements: tuple[Measurement, ...] = (
        Measurement("Anomaly map percentile", summary.percentile, "1"),
        Measurement("Anomalous volume", summary.volume_ml, "mL"),
    )
    if summary.centre is not None:
        measurements = (Measurement("Diameter", summary.diameter_mm, "mm"), *measurements)
    finding = Finding(
        LABEL,
        codes.ANOMALY,
        NAME,
        score=summary.score,
        present=summary.percentile >= summary.threshold,
        measurements=measurements,
        key_slice=summary.key_slice,
        location=summary.centre,
        description=(
            f"{len(summary.slices)} lung slices analysed; largest region "
            f"{summary.largest_ml:.1f} mL (rule-based score){reduced}"
        ),
        threshold=Measurement("Anomaly map percentile", summary.threshold, "1"),
        laterality=summary.laterality,
    )
    features = {
        "diffusion_anomaly.score": summary.score,
        "diffusion_anomaly.map_percentile": summary.percentile,
        "diffusion_anomaly.anomalous_volume": summary.volume_ml,
        "diffusion_anomaly.largest_region_volume": summary.largest_ml,
    }
    return AnalyzerResult(
        NAME,
        version,
        findings=(finding,),
        features=features,
        weights_sha256=weights_sha256,
        features_version=FEATURE_SET.version,
        maps=maps,
    )
