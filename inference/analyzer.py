"""The contract every analyzer of the ensemble implements, the way every fusion implements
``inference.fusion.FusionModel``: the quantitative analyzer and CT-CLIP today, the fVLM,
MedNeXt and anomaly analyzers next (DESIGN.md, "Where the design goes next").

An implementation says

- **what it needs** by its type parameter: ``Analyzer[Volume]`` reads the HU volume alone
  (the quantitative analyzer, CT-CLIP) and runs beside the other analyzers;
  ``Analyzer[Segmented]`` also reads the masks the quantitative segmentation derived (lungs,
  and organs once an analyzer produces them), so it runs after that segmentation;
- **what it returns**: one ``AnalyzerResult`` per volume: findings in the shared vocabulary
  (``inference.findings``), measurements, the named features a trained fusion reads under
  the analyzer's feature-set version (``inference.feature_schema``), and the masks it
  derived (key-image overlays, the next analyzers' input);
- **who it is**: ``name`` (the analyzer, the prefix of its features), ``version`` (its code
  and weights: cached features are reused only from the same version) and ``weights_sha256``
  (one per weights file, empty without weights), written into every SR (TID 4019 Algorithm
  Identification) so a report names the exact model that made it.

An analyzer is built once per process and kept resident (``inference.ensemble.build``); its
``analyze`` must be safe to call from the worker threads one volume at a time. An analyzer
that raises on one volume is reported as failed on that series; the others' results stand.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import numpy as np
import numpy.typing as npt

from inference.feature_schema import FeatureSet
from inference.findings import AnalyzerResult
from inference.volume import Volume

if TYPE_CHECKING:
    from config import NeuralSettings
    from inference.weights_store import ModelEntry

Mask = npt.NDArray[np.bool_]

Needs = TypeVar("Needs", contravariant=True)


@dataclass(frozen=True, eq=False)
class Segmented:
    """A volume with the masks derived from it, on its grid ``(z, y, x)``: ``lung_left``,
    ``lung_right`` (the quantitative segmentation) and, once an analyzer produces them,
    organ masks by name."""

    volume: Volume
    masks: Mapping[str, Mask]

    @property
    def lungs(self) -> Mask:
        return np.asarray(self.masks["lung_left"] | self.masks["lung_right"], dtype=np.bool_)


class Analyzer(Protocol[Needs]):
    """One analyzer of the ensemble; see the module's docstring for what each member means."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def weights_sha256(self) -> tuple[str, ...]: ...

    def analyze(self, needs: Needs, /) -> AnalyzerResult: ...


class NotRunHere(ValueError):
    """An analyzer that, as configured, does not run on this machine (e.g. a procedure
    that needs a GPU where there is none): not a fault of its weights; the message says why
    and every output of the node repeats it."""


Loader = Callable[[Path, "ModelEntry", "NeuralSettings"], "Analyzer[Any]"]


@dataclass(frozen=True)
class NeuralSpec:
    """One neural analyzer: ``name`` as the weights manifest and the features name it,
    ``title`` as reports name it, its ``feature_set`` with a title per feature, where its
    loader lives (``module:function``, imported only when weights are registered) and
    whether it reads the quantitative segmentation's masks (``Analyzer[Segmented]``) or the
    volume alone (``Analyzer[Volume]``). ``probabilities`` is False for an analyzer whose
    finding scores are not probabilities (the anomaly detector's calibrated score): the
    legacy JSON then names them ``<analyzer>_scores``."""

    name: str
    title: str
    feature_set: FeatureSet
    feature_titles: Mapping[str, str]
    loader: str
    needs_masks: bool = False
    probabilities: bool = True

    def load(self, store: Path, entry: ModelEntry, settings: NeuralSettings) -> Analyzer[Any]:
        """The resident analyzer for ``entry``: imports the model code (and torch)."""
        module, function = self.loader.split(":")
        return cast(Loader, getattr(importlib.import_module(module), function))(
            store, entry, settings
        )
