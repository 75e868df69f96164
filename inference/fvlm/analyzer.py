"""A registered fVLM checkpoint -> the resident scorer the ensemble runs.

Called once per process at start-up, after the weights store verified the file
(``inference.availability``). The checkpoint is memory-mapped and loaded strictly
(``checkpoint.load_checkpoint``); the prompt latents come from the cache beside the weights,
computed once when the entry names a tokenizer vocabulary; then the text encoder and its
projection (110 M of the 202 M parameters) are dropped before the model moves to its device.
TotalSegmentator joins when its weights are registered too (analyzer ``totalsegmentator``);
when they are absent or cannot run, fVLM scores the lungs only and every result says why.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from config import NeuralSettings
from inference.ctclip.scoring import cached_text_latents
from inference.device import pick_device
from inference.fvlm.checkpoint import load_checkpoint
from inference.fvlm.model import FVLM, FVLMConfig
from inference.fvlm.organs import ANALYZER as TOTALSEG
from inference.fvlm.organs import OrganSegmenter, OrgansError, point_at, unpack, weights_root
from inference.fvlm.results import CODE_VERSION, prompts
from inference.fvlm.scoring import FVLMScorer
from inference.strict import CheckpointError, LoadError
from inference.weights_store import ModelEntry, WeightsError, read_manifest, status

log = logging.getLogger(__name__)


def read_config(store: Path, entry: ModelEntry) -> FVLMConfig:
    """The entry's architecture: its ``architecture`` JSON, else the published hyperparameters."""
    if not entry.architecture:
        return FVLMConfig()
    path = store / entry.architecture
    try:
        return FVLMConfig.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise LoadError(f"{entry.name}: architecture {entry.architecture}: {exc}") from exc


def organ_segmenter(
    store: Path, settings: NeuralSettings, device: str
) -> tuple[OrganSegmenter | None, str]:
    """TotalSegmentator on the store's weights, or None and why not (empty when none are
    registered: the plain lung-only case)."""
    manifest = store / "manifest.toml"
    try:
        entries = read_manifest(manifest) if manifest.is_file() else []
    except WeightsError as exc:
        return None, str(exc)
    mine = [e for e in entries if e.analyzer == TOTALSEG]
    if not mine:
        return None, ""
    entry = mine[0]
    state, why = status(store, entry)
    if state != "present":
        return None, f"TotalSegmentator weights {entry.name}: {why}"
    try:
        root = weights_root(unpack(store / entry.file, entry.sha256), settings.organs_fast)
        point_at(root, store / ".totalsegmentator-home")
        segmenter = OrganSegmenter(root, settings.organs_fast, device)
        segmenter.check()
    except ImportError as exc:
        return None, f"TotalSegmentator is not installed (the 'organs' extra): {exc}"
    except (OrgansError, OSError) as exc:
        return None, f"TotalSegmentator weights {entry.name}: {exc}"
    return segmenter, ""


def load(store: Path, entry: ModelEntry, settings: NeuralSettings) -> FVLMScorer:
    """The scorer for ``entry`` on ``settings.device`` (``auto``: CUDA when present)."""
    try:
        device = pick_device(settings.device, settings.cpu_threads)
    except (RuntimeError, ValueError) as exc:
        raise LoadError(f"{entry.name}: {exc}") from exc
    cfg = read_config(store, entry)
    path = store / entry.file
    try:
        model = load_checkpoint(path, cfg)
    except CheckpointError as exc:
        raise LoadError(f"{entry.name}: {exc}") from exc
    except (OSError, RuntimeError) as exc:
        raise LoadError(f"{entry.name}: {entry.file} cannot be read: {exc}") from exc
    vocab = store / entry.vocab if entry.vocab else None
    try:
        latents = cached_text_latents(
            path, entry.sha256, vocab, prompts(), model.text_latents, cfg.max_txt_len
        )
    except FileNotFoundError as exc:
        raise LoadError(
            f"{entry.name}: {exc}; register the tokenizer's vocab.txt with the weights "
            "(ctnode weights register ... --vocab vocab.txt) so they are computed once"
        ) from exc
    drop_text(model)
    on = "cpu" if device.type == "cpu" else f"gpu:{device.index or 0}"
    segmenter, why = organ_segmenter(store, settings, on)
    if why:
        log.error("fvlm scores the lungs only: %s", why)
    scorer = FVLMScorer(
        model,
        f"{entry.name}-{entry.version}/code-{CODE_VERSION}",
        device,
        latents,
        weights_sha256=(entry.sha256,),
        segmenter=segmenter,
        fallback=why,
    )
    log.info(
        "analyzer fvlm loaded %s %s on %s, organ masks: %s",
        entry.name,
        entry.version,
        device,
        segmenter.mode if segmenter else "ctnode lungs only",
    )
    return scorer


def drop_text(model: FVLM) -> None:
    """Delete the text encoder and projection: the prompt latents are cached."""
    del model.text_encoder
    del model.text_proj
