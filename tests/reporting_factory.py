"""A realistic Analysis for reporting tests: density findings with UCUM units and a nodule."""

from __future__ import annotations

from inference.findings import Analysis, AnalyzerResult, Code, Finding, Fusion, Measurement
from inference.volume import Volume

EMPHYSEMA = Code("87433001", "SCT", "Pulmonary emphysema")
NODULE = Code("427359005", "SCT", "Solitary nodule of lung")
OPACITY = Code("263714004", "SCT", "Ground glass opacity")
CONSOLIDATION = Code("95436008", "SCT", "Lung consolidation")


def make_analysis(volume: Volume) -> Analysis:
    """A realistic analysis: density findings with UCUM measurements and a located nodule."""
    z = volume.shape[0] // 2
    centre = volume.to_patient(z, 30.0, 20.0)
    density = AnalyzerResult(
        analyzer="density",
        version="1.2.0",
        weights_sha256=(),
        findings=(
            Finding(
                label="Emphysema",
                code=EMPHYSEMA,
                analyzer="density",
                score=0.71,
                present=True,
                key_slice=z,
                measurements=(
                    Measurement("LAA-950", 12.4, "%"),
                    Measurement("Emphysema volume", 310.5, "mL"),
                    Measurement("Perc15", -948.0, "[hnsf'U]"),
                ),
            ),
            Finding(
                label="Lung opacity",
                code=OPACITY,
                analyzer="density",
                score=0.2,
                measurements=(Measurement("Ground-glass volume", 15.0, "mL"),),
            ),
            Finding(label="Consolidation", code=CONSOLIDATION, analyzer="density", score=0.05),
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
    )
