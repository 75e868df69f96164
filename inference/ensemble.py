"""The analyzers this node runs on a volume, and their fusion into an ``Analysis``.

The quantitative analyzer always runs (it needs no weights). A neural analyzer joins when
the weights store holds verified weights for it (``inference.availability``) and they load
(:func:`build`, once per process: the models stay resident). The ensemble's feature schema
is the feature sets of the analyzers it runs, in a fixed order: what a trained fusion model
must have been trained on.

A neural analyzer that fails on one volume does not fail the analysis: its features are
NaN, the failure is logged and named in the outputs, and the other analyzers' results
stand.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.analyzer import Analyzer, NotRunHere, Segmented
from inference.availability import AnalyzerState, analyzer_states, chosen_entries
from inference.ctclip import results as ctclip_results
from inference.feature_schema import FeatureSchema, FeatureSet
from inference.findings import Analysis, AnalyzerResult
from inference.fusion import FusionModel
from inference.fusion.rules import RuleBasedFusion
from inference.neural import BY_NAME as NEURAL_SPECS
from inference.neural import SPECS
from inference.quant import analyzer as quantitative
from inference.volume import Volume

if TYPE_CHECKING:
    from config import Settings

log = logging.getLogger(__name__)

# Every analyzer's feature set, in the order a schema lists them.
FEATURE_SETS: dict[str, FeatureSet] = {
    quantitative.NAME: quantitative.FEATURE_SET,
    **{s.name: s.feature_set for s in SPECS},
}
FEATURE_TITLES = {
    **quantitative.FEATURE_TITLES,
    **{name: title for s in SPECS for name, title in s.feature_titles.items()},
}


def feature_schema(analyzers: Sequence[str] = (quantitative.NAME,)) -> FeatureSchema:
    """The features ``analyzers`` publish, in the order a fusion model reads them."""
    unknown = [a for a in analyzers if a not in FEATURE_SETS]
    if unknown:
        raise ValueError(f"no feature set for analyzer(s) {', '.join(unknown)}")
    return FeatureSchema(tuple(FEATURE_SETS[a] for a in FEATURE_SETS if a in analyzers))


def planned_schema(settings: Settings) -> FeatureSchema:
    """The schema the node's ensemble will have, from the weights store alone (no model
    is loaded): for training and checking a fusion model offline."""
    states = analyzer_states(
        Path(settings.neural.weights_dir), settings.fusion.model, settings.neural.models
    )
    return feature_schema(tuple(s.name for s in states if s.enabled and s.name in FEATURE_SETS))


def feature_units() -> dict[str, str]:
    """The UCUM unit of every feature any analyzer publishes."""
    return {f.name: f.unit for s in FEATURE_SETS.values() for f in s.features}


@dataclass(frozen=True)
class Ensemble:
    """The quantitative analyzer plus the loaded neural analyzers: ``neural`` need the volume
    alone, ``segmented`` also the quantitative segmentation's masks
    (``inference.analyzer``); ``states`` says for every analyzer of the design whether it
    runs and why (for logs, ``/health`` and reports)."""

    neural: tuple[Analyzer[Volume], ...] = ()
    states: tuple[AnalyzerState, ...] = ()
    segmented: tuple[Analyzer[Segmented], ...] = ()

    @property
    def loaded(self) -> tuple[Analyzer[Any], ...]:
        return (*self.neural, *self.segmented)

    @property
    def names(self) -> tuple[str, ...]:
        return (quantitative.NAME, *(a.name for a in self.loaded))

    def feature_schema(self) -> FeatureSchema:
        return feature_schema(self.names)

    def versions(self) -> dict[str, str]:
        """Each analyzer's version (a neural one's names its weights and code): cached
        features are reused only from the same version."""
        return {quantitative.NAME: quantitative.VERSION, **{a.name: a.version for a in self.loaded}}

    def not_running(self) -> tuple[tuple[str, str], ...]:
        """(analyzer, reason) for each analyzer of the design that does not run here."""
        return tuple(
            (s.name, s.reason) for s in self.states if not s.enabled and s.name != "fusion"
        )

    def run(
        self,
        volume: Volume,
        *,
        sharp_kernel: bool,
        fusion: FusionModel | None = None,
        max_nodules: int = 5,
    ) -> Analysis:
        """Every analyzer on ``volume``, then the fusion. The neural analyzers run one after
        the other in a thread of their own while the quantitative analysis runs here: on a
        GPU the two overlap completely, and on two CPU cores the network fills what the
        quantitative analysis leaves idle (for the 248-slice CT about a fifth less time
        than one after the other: 15 s instead of 18-20 s). The ``segmented`` analyzers
        follow in that thread once the quantitative segmentation is there."""
        quantitative_analyzer = quantitative.QuantitativeAnalyzer(
            sharp_kernel=sharp_kernel, max_nodules=max_nodules
        )
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: list[tuple[Analyzer[Any], Future[AnalyzerResult]]] = [
                (a, pool.submit(a.analyze, volume)) for a in self.neural
            ]
            quant = quantitative_analyzer.analyze(volume)
            segmented = Segmented(volume, quant.masks)
            pending += [(a, pool.submit(a.analyze, segmented)) for a in self.segmented]
            done = [(a, _collect(a, future)) for a, future in pending]
        results = (quant, *(r for _, r in done if isinstance(r, AnalyzerResult)))
        failed = tuple((a.name, r) for a, r in done if isinstance(r, str))
        fused = (fusion or RuleBasedFusion()).fuse(results)
        return Analysis(
            volume.study_uid,
            volume.series_uid,
            results,
            fused,
            quant.masks,
            not_run=self.not_running() + failed,
        )


def _collect(analyzer: Analyzer[Any], future: Future[AnalyzerResult]) -> AnalyzerResult | str:
    """The analyzer's result, or the reason it failed on this volume."""
    try:
        return future.result()
    except Exception as exc:  # a model failing on one volume must not fail the study
        return _failed(analyzer, exc)


def _failed(analyzer: Analyzer[Any], exc: Exception) -> str:
    """The reason, logged in the caller's thread (the job's correlation id)."""
    reason = f"failed on this series: {type(exc).__name__}: {exc}"[:200]
    log.warning("analyzer %s %s", analyzer.name, reason)
    return reason


def build(settings: Settings) -> Ensemble:
    """The ensemble ``settings`` allow: weights verified, enabled models loaded. A registered
    model that fails to load is disabled with the reason (a fault the site must mend) rather
    than stopping the node: the other analyzers still serve."""
    store = Path(settings.neural.weights_dir)
    states = analyzer_states(store, settings.fusion.model, settings.neural.models)
    entries = chosen_entries(store, settings.neural.models)
    neural: list[Analyzer[Volume]] = []
    segmented: list[Analyzer[Segmented]] = []
    final: list[AnalyzerState] = []
    for state in states:
        spec = NEURAL_SPECS.get(state.name)
        if not state.enabled or spec is None:
            final.append(state)
            continue
        try:
            # the torch boundary: a model's code (and torch) is imported only when its
            # weights are registered
            analyzer = spec.load(store, entries[state.name], settings.neural)
        except NotRunHere as exc:
            log.info("analyzer %s does not run here: %s", state.name, exc)
            final.append(replace(state, enabled=False, reason=str(exc)))
            continue
        except (ValueError, ImportError) as exc:
            log.error("analyzer %s cannot run: %s", state.name, exc)
            final.append(replace(state, enabled=False, reason=str(exc), fault=True))
            continue
        (segmented if spec.needs_masks else neural).append(analyzer)
        # how it runs, when it says (fVLM: where its organ masks come from)
        detail = getattr(analyzer, "detail", "")
        final.append(replace(state, reason=f"{state.reason}; {detail}") if detail else state)
    _share_encoders(neural)
    return Ensemble(tuple(neural), tuple(final), tuple(segmented))


def _share_encoders(analyzers: Sequence[Analyzer[Volume]]) -> None:
    """A ClassFine head on the very encoder the zero-shot model has (CT_LiPro trained on
    the frozen CT-CLIP) runs on that encoder's pass: one forward per volume, not two."""
    if len(analyzers) < 2:
        return  # nothing to share (and no reason to import torch)
    # the torch boundary: CTCLIPScorer is a torch model
    from inference.ctclip.scoring import CTCLIPScorer  # noqa: PLC0415

    by_name = {a.name: a for a in analyzers if isinstance(a, CTCLIPScorer)}
    zero_shot = by_name.get(ctclip_results.ZERO_SHOT)
    supervised = by_name.get(ctclip_results.SUPERVISED)
    if zero_shot is not None and supervised is not None and supervised.share_encoder(zero_shot):
        log.info("ctclip-supervised shares the ctclip image encoder: one pass per volume")


def shared(settings: Settings) -> Ensemble:
    """The process's ensemble for ``settings``' weights: built once, models kept resident
    (``ctnode features`` worker processes each build their own on first use)."""
    key = (settings.neural, settings.fusion.model)
    if key not in _SHARED:
        _SHARED[key] = build(settings)
    return _SHARED[key]


_SHARED: dict[object, Ensemble] = {}
