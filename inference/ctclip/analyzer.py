"""A registered CT-CLIP checkpoint -> a resident scorer the ensemble runs.

Called once per process at start-up, after the weights store verified the file
(``inference.availability``). The checkpoint is memory-mapped and loaded strictly
(``checkpoint.load_checkpoint``); a zero-shot model gets its prompt latents from the cache
beside the weights, computing them once when the entry names a tokenizer vocabulary. Then
what scoring never touches is dropped before the model moves to its device: the text
encoder and every module the checkpoint carries for training only (CT-CLIP.md,
"Checkpoints"), 264 M of the 442 M parameters, 1 GB less on a GPU.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from config import NeuralSettings
from inference.ctclip.checkpoint import Kind, load_checkpoint
from inference.ctclip.model import CTCLIP, ClassFine, CTCLIPConfig
from inference.ctclip.results import CODE_VERSION, SUPERVISED
from inference.ctclip.scoring import CTCLIPScorer, text_latents
from inference.device import pick_device
from inference.strict import CheckpointError, LoadError
from inference.weights_store import ModelEntry

log = logging.getLogger(__name__)


def read_config(store: Path, entry: ModelEntry) -> CTCLIPConfig:
    """The entry's architecture: its ``architecture`` JSON, else the published hyperparameters."""
    if not entry.architecture:
        return CTCLIPConfig()
    path = store / entry.architecture
    try:
        return CTCLIPConfig.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise LoadError(f"{entry.name}: architecture {entry.architecture}: {exc}") from exc


def load(store: Path, entry: ModelEntry, settings: NeuralSettings) -> CTCLIPScorer:
    """The scorer for ``entry`` (analyzer ``ctclip``: zero-shot, or ``ctclip-supervised``:
    ClassFine) on CUDA when present, else on the CPU with ``settings.cpu_threads``."""
    cfg = read_config(store, entry)
    path = store / entry.file
    want: Kind = "classfine" if entry.analyzer == SUPERVISED else "base"
    try:
        model = load_checkpoint(path, cfg, expect=want)
    except CheckpointError as exc:
        raise LoadError(f"{entry.name}: {exc}") from exc
    except (OSError, RuntimeError) as exc:
        raise LoadError(f"{entry.name}: {entry.file} cannot be read: {exc}") from exc
    latents = None
    if isinstance(model, CTCLIP):
        vocab = store / entry.vocab if entry.vocab else None
        try:
            latents = text_latents(model, path, entry.sha256, vocab)
        except FileNotFoundError as exc:
            raise LoadError(
                f"{entry.name}: {exc}; register the tokenizer's vocab.txt with the weights "
                "(ctnode weights register ... --vocab vocab.txt) so they are computed once"
            ) from exc
    drop_unused(model)
    device = pick_device(settings.device, settings.cpu_threads)
    bf16 = settings.bf16_autocast if device.type == "cuda" else settings.cpu_bf16
    scorer = CTCLIPScorer(
        model,
        entry.analyzer,
        f"{entry.name}-{entry.version}/code-{CODE_VERSION}",
        device,
        latents,
        autocast_bf16=bf16,
        weights_sha256=(entry.sha256,),
    )
    log.info(
        "analyzer %s loaded %s %s on %s%s",
        entry.analyzer,
        entry.name,
        entry.version,
        device,
        " (bf16 autocast)" if bf16 else "",
    )
    return scorer


def drop_unused(model: CTCLIP | ClassFine) -> None:
    """Delete the modules scoring never runs (the prompt latents are cached; the rest are
    for training), so they are neither resident nor copied to a GPU."""
    base = model.trained_model if isinstance(model, ClassFine) else model
    for name in (
        "text_transformer",
        "to_text_latent",
        "to_text_latent_extra",
        "to_visual_latent_extra",
    ):
        delattr(base, name)
    vit = base.visual_transformer
    for name in ("to_patch_emb_first_frame", "to_pixels_first_frame", "to_pixels"):
        delattr(vit, name)
