"""Fusion: every analyzer's result -> the overall result (the legacy JSON's
``probability_of_pathology``, ``pathology`` and ``most_dangerous_pathology_type``).

``FusionModel`` is what every fusion implements. ``rules`` holds the rule-based fusion, the
default; ``trained`` a site-trained LightGBM model that replaces it when ``[fusion] model``
names one. :func:`load_fusion`, the choice between them, is the one place the node,
``ctnode analyze`` and ``ctnode features`` get their fusion from. Both fusions rank findings
by ``inference.findings.SEVERITY``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from inference.findings import AnalyzerResult, Fusion
from inference.fusion import trained
from inference.fusion.rules import RuleBasedFusion

if TYPE_CHECKING:
    from config import Settings
    from inference.feature_schema import FeatureSchema


class FusionModel(Protocol):
    """A fusion: ``name`` and ``version`` identify it in every output (TID 4019)."""

    name: str
    version: str

    def fuse(self, results: Sequence[AnalyzerResult]) -> Fusion: ...


def load_fusion(settings: Settings, schema: FeatureSchema) -> FusionModel:
    """The fusion ``settings`` ask for: the trained model named by ``[fusion] model`` (from
    the weights store, verified, its feature schema checked against this node's analyzers),
    else the rule-based fusion with ``[fusion] threshold``.

    Raises ``trained.FusionModelError`` (a ``ValueError``) with a sentence
    when the named model cannot be used: the node must not silently fall back to rules a
    site did not choose.
    """
    if not settings.fusion.model:
        return RuleBasedFusion(settings.fusion.threshold, settings.fusion.rule_analyzers)
    return trained.load(
        Path(settings.neural.weights_dir),
        settings.fusion.model,
        schema,
        top_k=settings.fusion.top_k,
    )
