"""Run the enabled analyzers on a volume and fuse their results into an ``Analysis``.

Today the quantitative analyzer always runs (it needs no weights); neural analyzers join
here as their weights become available.
"""

from __future__ import annotations

from inference.findings import Analysis
from inference.fusion import FusionModel, RuleBasedFusion
from inference.quant import analyzer as quantitative
from inference.volume import Volume


def run(
    volume: Volume, *, sharp_kernel: bool, fusion: FusionModel | None = None, max_nodules: int = 5
) -> Analysis:
    quant = quantitative.analyze(volume, sharp_kernel=sharp_kernel, max_nodules=max_nodules)
    results = (quant.result,)
    fused = (fusion or RuleBasedFusion()).fuse(results)
    return Analysis(volume.study_uid, volume.series_uid, results, fused, quant.masks)
