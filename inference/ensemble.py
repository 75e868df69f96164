"""Run the enabled analyzers on a volume and fuse their results into an ``Analysis``.

Today the quantitative analyzer always runs (it needs no weights); neural analyzers join
here as their weights become available, and their feature sets join ``FEATURE_SETS``, the
node's feature schema that a trained fusion model must match.
"""

from __future__ import annotations

from inference.features import FeatureSchema
from inference.findings import Analysis
from inference.fusion import FusionModel, RuleBasedFusion
from inference.quant import analyzer as quantitative
from inference.volume import Volume

FEATURE_SETS = (quantitative.FEATURE_SET,)
# Code version of each analyzer: cached features are reused only from the same code.
ANALYZER_VERSIONS = {quantitative.NAME: quantitative.VERSION}


def feature_schema() -> FeatureSchema:
    """The features this node's analyzers publish, in the order a fusion model reads them."""
    return FeatureSchema(FEATURE_SETS)


def run(
    volume: Volume, *, sharp_kernel: bool, fusion: FusionModel | None = None, max_nodules: int = 5
) -> Analysis:
    quant = quantitative.analyze(volume, sharp_kernel=sharp_kernel, max_nodules=max_nodules)
    results = (quant.result,)
    fused = (fusion or RuleBasedFusion()).fuse(results)
    return Analysis(volume.study_uid, volume.series_uid, results, fused, quant.masks)
