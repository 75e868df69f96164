"""The analyzer contract (``inference.analyzer.Analyzer``): an analyzer that needs the lung
mask gets the quantitative segmentation's, and its result joins the analysis like any
other; one that fails is named, not fatal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference import ensemble
from inference.analyzer import Analyzer, Segmented
from inference.findings import AnalyzerResult
from inference.loading import load_series
from inference.quant import analyzer as quantitative
from inference.volume import Volume
from tests.phantoms import chest_phantom


class _LungVolume:
    """Needs the lung mask: reports the lungs' share of the volume."""

    name = "lung-share"
    version = "test"
    weights_sha256: tuple[str, ...] = ()

    def analyze(self, needs: Segmented, /) -> AnalyzerResult:
        share = float(needs.lungs.mean())
        return AnalyzerResult(self.name, self.version, features={"lung_share": share})


class _Failing(_LungVolume):
    name = "failing"

    def analyze(self, needs: Segmented, /) -> AnalyzerResult:
        raise RuntimeError("out of memory")


def test_an_analyzer_that_needs_the_lung_mask_gets_it(tmp_path: Path) -> None:
    volume = load_series(chest_phantom(tmp_path, "contract"))
    needs_masks: tuple[Analyzer[Segmented], ...] = (_LungVolume(), _Failing())
    built = ensemble.Ensemble(segmented=needs_masks)
    assert built.names == ("quantitative", "lung-share", "failing")
    analysis = built.run(volume, sharp_kernel=False)
    quant, share = analysis.results
    lungs = np.asarray(quant.masks["lung_left"] | quant.masks["lung_right"])
    assert 0.0 < share.features["lung_share"] == float(lungs.mean())
    assert analysis.not_run == (("failing", "failed on this series: RuntimeError: out of memory"),)


def test_the_quantitative_analyzer_implements_the_contract() -> None:
    analyzer: Analyzer[Volume] = quantitative.QuantitativeAnalyzer(sharp_kernel=False)
    identity = (analyzer.name, analyzer.version, analyzer.weights_sha256)
    assert identity == (quantitative.NAME, quantitative.VERSION, ())
