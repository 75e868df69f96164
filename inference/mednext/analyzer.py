"""A registered MedNeXt classifier -> a resident scorer the ensemble runs on segmented volumes.

Called once per process at start-up, after the weights store verified the file
(``inference.availability``). The entry's model card (``card`` in the manifest) says what
the weights are: labels, thresholds, variant, kernel size, preprocessing; the weights are
loaded strictly into the classifier the card describes (``checkpoint.read`` accepts the
trainer's checkpoint dict, a plain state dict and DDP's ``module.`` prefix). The card's
sha256 joins the weights' in the analyzer's identity, so an SR names both.

An ``Analyzer[Segmented]``: the input is cut around the node's own lung mask. On ``[neural]
device`` (``auto``: CUDA when present, else the CPU with ``[neural] cpu_threads``); float32
always (no reduced precision has been measured for this model).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from config import NeuralSettings
from inference.analyzer import Segmented
from inference.device import pick_device
from inference.findings import AnalyzerResult
from inference.mednext.card import CardError, ModelCard
from inference.mednext.checkpoint import load_strict, read
from inference.mednext.model import MedNeXtClassifier, classifier_for
from inference.mednext.preprocess import preprocess
from inference.mednext.results import CODE_VERSION, NAME, to_result
from inference.strict import CheckpointError, LoadError
from inference.weights_store import ModelEntry, cached_sha256

log = logging.getLogger(__name__)


@dataclass
class MedNeXtScorer:
    """A resident classifier turning a segmented volume into one probability per card label.
    One forward pass at a time (worker threads share the model)."""

    model: MedNeXtClassifier
    card: ModelCard
    version: str
    device: torch.device
    weights_sha256: tuple[str, ...] = ()
    name: str = NAME
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.model = self.model.to(self.device).eval()

    def probabilities(self, x: torch.Tensor) -> list[float]:
        """Per-label probabilities (card order) of a preprocessed (1, D, H, W) input."""
        with self._lock, torch.no_grad():
            logits = self.model(x[None].to(self.device, torch.float32))
        return [float(p) for p in torch.sigmoid(logits[0]).cpu()]

    def analyze(self, needs: Segmented) -> AnalyzerResult:
        volume = needs.volume
        x = preprocess(
            volume.voxels, volume.spacing, needs.lungs, self.card.preprocessing, self.device
        )
        return to_result(self.probabilities(x), self.card, self.version, self.weights_sha256)


def read_card(store: Path, entry: ModelEntry) -> ModelCard:
    if not entry.card:
        raise LoadError(
            f"{entry.name}: no model card registered; register the weights with their card "
            "(ctnode weights register ... --card card.json)"
        )
    try:
        return ModelCard.read(store / entry.card)
    except CardError as exc:
        raise LoadError(f"{entry.name}: card {entry.card}: {exc}") from exc


def load_classifier(path: Path, card: ModelCard) -> MedNeXtClassifier:
    """The classifier ``card`` describes with the weights of ``path``, in eval mode."""
    state, _ = read(path)
    model = classifier_for(card)
    load_strict(model, state)
    return model.eval()


def load(store: Path, entry: ModelEntry, settings: NeuralSettings) -> MedNeXtScorer:
    """The scorer for ``entry`` on ``[neural] device`` (``auto``: CUDA when present)."""
    try:
        device = pick_device(settings.device, settings.cpu_threads)
    except (RuntimeError, ValueError) as exc:
        raise LoadError(f"{entry.name}: {exc}") from exc
    card = read_card(store, entry)
    try:
        model = load_classifier(store / entry.file, card)
    except CheckpointError as exc:
        raise LoadError(f"{entry.name}: {exc}") from exc
    except (OSError, RuntimeError) as exc:
        raise LoadError(f"{entry.name}: {entry.file} cannot be read: {exc}") from exc
    scorer = MedNeXtScorer(
        model,
        card,
        f"{entry.name}-{entry.version}/code-{CODE_VERSION}",
        device,
        weights_sha256=(entry.sha256, cached_sha256(store / entry.card)),
    )
    log.info(
        "analyzer %s loaded %s %s (MedNeXt-%s k%d, %d labels) on %s",
        NAME,
        entry.name,
        entry.version,
        card.variant,
        card.kernel_size,
        len(card.labels),
        device,
    )
    return scorer
