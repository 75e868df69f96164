"""``ctnode mednext train`` from end to end: studies + labels -> inputs (the analyzer's own
preprocessing) -> a trained classifier -> its model card -> the weights store.

The result is registered as the analyzer ``mednext`` under ``name`` (version: the
registered one + 1): the best epoch's weights as a plain state dict ``<name>.pt``, and the
card ``<name>.mednext-card.json`` with the labels, the operating thresholds (Youden's J on
the validation split), the variant and the preprocessing, and what training measured.
The trainer's checkpoints stay in the work folder (``--resume`` continues from them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from config import Settings
from inference import weights_store
from inference.mednext.card import Architecture, ModelCard, Preprocessing
from inference.mednext.checkpoint import load_encoder, read
from inference.mednext.model import classifier_for
from inference.mednext.results import NAME
from inference.weights_store import ModelEntry
from training.mednext.data import Skipped, match, prepare_inputs
from training.mednext.labels import read_multilabels
from training.mednext.loop import FitResult, Input, TrainOptions, fit
from training.register import next_version

LICENCE = "site-owned: trained on this site's studies by ctnode mednext train"
SOURCE = "local (ctnode mednext train); not downloadable"


@dataclass(frozen=True)
class Request:
    """What to train on and how; see ``cli.mednext`` for each option's meaning."""

    paths: tuple[Path, ...]
    labels: Path
    store: Path
    workdir: Path
    name: str = "site-mednext"
    version: str | None = None
    variant: str = "B"
    kernel_size: int = 3
    architecture: Architecture | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    label_names: tuple[str, ...] = ()
    id_column: str | None = None
    init: Path | None = None
    ignore_unknown_labels: bool = False
    resume: bool = False
    options: TrainOptions = field(default_factory=TrainOptions)


@dataclass(frozen=True)
class Outcome:
    card: ModelCard
    entry: ModelEntry
    fit: FitResult
    skipped: tuple[Skipped, ...] = ()


def train_and_register(
    request: Request,
    settings: Settings,
    *,
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> Outcome:
    """Read the labels, prepare the studies, train, register; ``ValueError`` subclasses
    (``LabelError``, ``CardError``, ``CheckpointError``) say what is wrong with the inputs."""
    labels = read_multilabels(request.labels, request.label_names or None, request.id_column)
    draft = ModelCard(
        name=request.name,
        version=request.version or next_version(request.store, request.name),
        labels=labels.labels,
        thresholds=(0.5,) * len(labels.labels),
        variant="custom" if request.architecture else request.variant,
        kernel_size=request.kernel_size,
        preprocessing=request.preprocessing,
        architecture=request.architecture,
    )
    prepared, skipped = prepare_inputs(
        request.paths, settings, draft.preprocessing, request.workdir / "inputs", progress=progress
    )
    files, y = match(prepared, labels, ignore_unknown=request.ignore_unknown_labels)
    outcome = train_inputs(
        draft,
        list(files),
        y,
        store=request.store,
        workdir=request.workdir,
        options=request.options,
        init=request.init,
        resume=request.resume,
        progress=progress,
        report=report,
    )
    return replace(outcome, skipped=tuple(skipped))


def train_inputs(
    draft: ModelCard,
    inputs: Sequence[Input],
    y: npt.NDArray[np.int_],
    *,
    store: Path,
    workdir: Path,
    options: TrainOptions,
    init: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> Outcome:
    """Train the classifier ``draft`` describes on prepared inputs, write its card with the
    chosen thresholds and register both in ``store``."""
    torch.manual_seed(options.seed)  # the head's (and a fresh encoder's) initialisation
    model = classifier_for(draft)
    if init is not None:
        state, _ = read(init)
        load_encoder(model, state)
    result = fit(
        model,
        inputs,
        y,
        draft.labels,
        options,
        workdir,
        resume=resume,
        progress=progress,
        report=report,
    )
    card = replace(
        draft, thresholds=tuple(result.thresholds), training=_summary(result, y, init, options)
    )
    weights = workdir / f"{draft.name}.pt"
    torch.save(result.state, weights)
    card_file = card.write(workdir / f"{draft.name}.mednext-card.json")
    entry = weights_store.register(
        store,
        weights,
        name=draft.name,
        analyzer=NAME,
        version=draft.version,
        licence=LICENCE,
        origin=SOURCE,
        card=card_file,
    )
    return Outcome(card, entry, result)


def _summary(
    result: FitResult, y: npt.NDArray[np.int_], init: Path | None, options: TrainOptions
) -> dict[str, object]:
    """What the card records of the training, for people reading it."""

    def number(value: float) -> float | None:
        return None if not math.isfinite(value) else round(float(value), 4)

    return {
        "studies": len(y),
        "positives": [int(v) for v in y.sum(axis=0)],
        "validation_studies": len(result.val_y),
        "validation_positives": [int(v) for v in result.val_y.sum(axis=0)],
        "validation_auroc": [number(a) for a in result.auroc],
        "threshold_rule": "Youden's J on the validation split (0.5 where it has one class)",
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "device": result.device,
        "initialised_from": init.name if init else None,
        "mean_validation_auroc_by_epoch": [number(h["mean_val_auroc"]) for h in result.history],
        "options": asdict(options),
    }
