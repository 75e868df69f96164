"""A realistic Analysis for reporting tests: density findings with UCUM units and a nodule."""

from __future__ import annotations

import numpy as np

from inference import codes
from inference.findings import Analysis, AnalyzerResult, Finding, Fusion, Measurement, label_code
from inference.volume import Volume

EMPHYSEMA = codes.EMPHYSEMA
NODULE = codes.NODULE
OPACITY = label_code("Lung opacity")
CONSOLIDATION = codes.CONSOLIDATION


def lung_masks(volume: Volume) -> dict[str, np.ndarray]:
    """Two elliptic 'lungs' either side of the middle, on every slice."""
    _, rows, columns = volume.shape
    y, x = np.mgrid[0:rows, 0:columns]
    masks = {}
    for name, cx in (("lung_right", columns * 0.3), ("lung_left", columns * 0.7)):
        inside = ((x - cx) / (columns * 0.17)) ** 2 + ((y - rows / 2) / (rows * 0.35)) ** 2 < 1
        masks[name] = np.repeat(inside[None], volume.shape[0], axis=0)
    return masks


def make_analysis(volume: Volume) -> Analysis:
    """A realistic analysis: density findings with UCUM measurements and a located nodule."""
    z = volume.shape[0] // 2
    centre = volume.to_patient(z, 30.0, 20.0)
    density = AnalyzerResult(
        analyzer="density",
        version="1.2.0",
        weights_sha256=(),
        measurements=(
            Measurement("Lung volume", 4100.0, "mL", region="both lungs"),
            Measurement("Lung volume", 1900.0, "mL", region="left lung"),
            Measurement("Lung volume", 2200.0, "mL", region="right lung"),
            Measurement("Mean lung density", -820.0, "[hnsf'U]", region="both lungs"),
        ),
        findings=(
            Finding(
                label="Emphysema",
                code=EMPHYSEMA,
                analyzer="density",
                score=0.71,
                present=True,
                key_slice=z,
                measurements=(
                    Measurement("LAA%-950", 12.4, "%", region="both lungs"),
                    Measurement("Perc15", -948.0, "[hnsf'U]", region="both lungs"),
                ),
                threshold=Measurement("Emphysema threshold", 6.0, "%"),
            ),
            Finding(
                label="Lung opacity",
                code=OPACITY,
                analyzer="density",
                score=0.2,
                measurements=(
                    Measurement("Ground-glass range volume", 15.0, "mL", region="both lungs"),
                ),
            ),
            Finding(
                label="Consolidation",
                code=CONSOLIDATION,
                analyzer="density",
                score=0.05,
                measurements=(Measurement("Consolidation range", 0.3, "%", region="both lungs"),),
            ),
        ),
    )
    nodules = AnalyzerResult(
        analyzer="nodule-candidates",
        version="0.3.1",
        weights_sha256=("ab" * 32, "cd" * 32),
        findings=(
            Finding(
                label="Lung nodule",
                code=NODULE,
                analyzer="nodule-candidates",
                score=0.83,
                calibrated=True,
                present=True,
                key_slice=z,
                location=centre,
                measurements=(Measurement("Diameter", 7.5, "mm"),),
                laterality=codes.LEFT,
                zone=codes.UPPER_ZONE,
            ),
        ),
    )
    fusion = Fusion(
        method="max",
        version="1",
        probability_of_pathology=0.83,
        pathology=True,
        most_dangerous_pathology_type="Lung nodule",
    )
    return Analysis(
        study_uid=volume.study_uid,
        series_uid=volume.series_uid,
        results=(density, nodules),
        fusion=fusion,
        masks=lung_masks(volume),
    )
