"""The rule-based fusion: the highest score of the analyzers whose scores mean something at
0.5, and the most severe finding at or above the threshold. The default fusion; every output
says plainly that its result is a rule-based score.
"""

from __future__ import annotations

from collections.abc import Sequence

from inference.findings import AnalyzerResult, Fusion, most_dangerous


class RuleBasedFusion:
    """The overall score is the highest finding score of ``analyzers``; ``pathology`` when
    it reaches the threshold; the most dangerous type is the most severe finding at or
    above it. Other analyzers' findings are reported but do not decide (``[fusion]
    rule_analyzers``: only scores whose 0.5 means something belong here)."""

    name = "rule-based"
    version = "1.0.0"

    def __init__(
        self, threshold: float = 0.5, analyzers: Sequence[str] = ("quantitative",)
    ) -> None:
        self.threshold = threshold
        self.analyzers = tuple(analyzers)

    def fuse(self, results: Sequence[AnalyzerResult]) -> Fusion:
        findings = [
            f
            for r in results
            if r.analyzer in self.analyzers
            for f in r.findings
            if f.score is not None
        ]
        probability = max((float(f.score or 0.0) for f in findings), default=0.0)
        positive = [f for f in findings if (f.score or 0.0) >= self.threshold]
        return Fusion(
            method=self.name,
            version=self.version,
            probability_of_pathology=round(probability, 4),
            pathology=probability >= self.threshold,
            most_dangerous_pathology_type=most_dangerous(positive),
            calibrated=False,
            threshold=self.threshold,
        )
