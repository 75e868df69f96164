"""fVLM zero-shot scoring of a segmented volume: organ windows -> 16 label probabilities.

For each organ with a mask, the evaluation windows (``inference.fvlm.preprocess``) run through
the image encoder, windows of one shape as one batch, and each organ scored in a window gives
its latent; a label's probability is softmax over (negative, positive) of latent . prompt
latent / temp, positive taken, averaged over the windows that scored its organ (fVLM.md). The
prompt latents are computed once per checkpoint and cached beside it; the text encoder is not
resident.

Organ masks come from TotalSegmentator when its weights are registered
(``inference.fvlm.organs``); without them only the lung head runs, on the node's own lung mask,
and the result says so ("lung only, masks: ctnode"): the heart, esophagus and aorta labels are
absent, never guessed. Float32 throughout: no test has yet shown that a lower precision leaves
the probabilities where they are.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from inference.analyzer import Segmented
from inference.findings import AnalyzerResult
from inference.fvlm.model import FVLM
from inference.fvlm.organs import OrganSegmenter
from inference.fvlm.preprocess import Window, label_volume, organ_windows, prepare
from inference.fvlm.results import (
    LUNG_ONLY,
    ORGAN_LABELS,
    ORGANS,
    to_result,
    unscored_note,
)

log = logging.getLogger(__name__)

Masks = dict[str, npt.NDArray[np.bool_]]


def prompt_table(latents: Tensor) -> dict[str, Tensor]:
    """Label -> its (2, embed) prompt latents (negative, positive), from the (32, embed) latents
    of :func:`inference.fvlm.results.prompts`."""
    labels = [label for organ in ORGANS for label in ORGAN_LABELS[organ]]
    if latents.shape[0] != 2 * len(labels):
        raise ValueError(f"expected {2 * len(labels)} prompt latents, got {latents.shape[0]}")
    return {label: latents[2 * i : 2 * i + 2] for i, label in enumerate(labels)}


def pick_device(wanted: str, threads: int) -> torch.device:
    """``auto``: CUDA when present, else the CPU; or the device named (``cpu``, ``cuda``,
    ``cuda:1``). On the CPU, ``threads`` intra-op threads."""
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(wanted)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"[neural] device = {wanted!r} but no CUDA device is present")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"[neural] device = {wanted!r}: only {torch.cuda.device_count()} GPUs")
    if device.type == "cpu":
        torch.set_num_threads(max(1, threads))
    return device


@dataclass
class FVLMScorer:
    """The resident fVLM analyzer (``Analyzer[Segmented]``).

    ``segmenter`` makes the four organ masks (TotalSegmentator); None runs the lung head on
    the node's lung mask. ``fallback`` says why there is no segmenter when weights were
    registered but cannot run (it joins the result's notes). ``batch`` caps how many windows
    of one shape run through the encoder together (on 2 CPU cores four 112 x 256 x 352 windows
    took 6.3 s as one batch, 7.8 s one by one)."""

    model: FVLM
    version: str
    device: torch.device
    prompt_latents: Tensor
    weights_sha256: tuple[str, ...] = ()
    segmenter: OrganSegmenter | None = None
    fallback: str = ""
    batch: int = 4
    name: str = "fvlm"
    _text: dict[str, Tensor] = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.model = self.model.to(self.device).eval()
        self._text = {k: v.to(self.device) for k, v in prompt_table(self.prompt_latents).items()}

    @property
    def detail(self) -> str:
        """Where the organ masks come from (``/health``, ``ctnode weights check``)."""
        if self.segmenter is not None:
            return f"organ masks: {self.segmenter.mode}"
        return f"{LUNG_ONLY} ({self.fallback or 'no TotalSegmentator weights registered'})"

    def masks(self, segmented: Segmented) -> tuple[Masks, tuple[str, ...]]:
        """The organ masks to score and the notes that say where they came from."""
        if self.segmenter is None:
            why = self.fallback or "no TotalSegmentator weights registered"
            rest = tuple(o for o in ORGANS if o != "lung")
            return {"lung": segmented.lungs}, (LUNG_ONLY, unscored_note(rest, why))
        organs = self.segmenter.segment(segmented.volume)
        notes = [f"masks: {self.segmenter.mode}"]
        missing = tuple(o for o in ORGANS if not organs[o].any())
        if missing:
            notes.append(unscored_note(missing, "not in TotalSegmentator's masks"))
        return organs, tuple(notes)

    def latents(self, windows: list[Window]) -> dict[int, list[Tensor]]:
        """Organ index -> its latent in every window that scored it. Windows cut from the same
        place share one encoder pass (in a chest CT cropped to its organs, every organ's
        window is usually the whole crop: one pass per series); distinct crops of one shape run
        as batches of at most ``batch``."""
        crops: dict[tuple[tuple[int, ...], tuple[int, ...]], list[Window]] = defaultdict(list)
        for window in windows:
            crops[(window.start, window.size)].append(window)
        shapes: dict[tuple[int, ...], list[list[Window]]] = defaultdict(list)
        for same in crops.values():
            shapes[tuple(same[0].image.shape)].append(same)
        out: dict[int, list[Tensor]] = defaultdict(list)
        with self._lock, torch.no_grad():
            for groups in shapes.values():
                for i in range(0, len(groups), self.batch):
                    part = groups[i : i + self.batch]
                    _, levels = self.model.visual_encoder(torch.cat([g[0].image for g in part]))
                    for j, group in enumerate(part):
                        mine = [level[j : j + 1] for level in levels]
                        for window in group:
                            found = self.model.organ_latents(mine, window.labels, window.organs)
                            for organ, latent in found.items():
                                out[organ].append(latent)
        return out

    def probabilities(self, latents: dict[int, list[Tensor]]) -> dict[str, float]:
        """Label -> P(positive), averaged over the windows that scored its organ (one copy to
        the CPU per organ)."""
        probs: dict[str, float] = {}
        with torch.no_grad():
            for organ, found in latents.items():
                labels = ORGAN_LABELS[ORGANS[organ]]
                text = torch.stack([self._text[label] for label in labels])  # (L, 2, E)
                logits = torch.einsum("ne,lke->nlk", torch.stack(found), text) / self.model.temp
                means = logits.softmax(-1)[..., 1].mean(0).tolist()
                probs.update(zip(labels, means, strict=True))
        return probs

    def analyze(self, segmented: Segmented) -> AnalyzerResult:
        """Score the organs ``segmented`` has masks for; the notes say which were not."""
        masks, notes = self.masks(segmented)
        labels = label_volume(masks)
        image, mask = prepare(segmented.volume, labels, self.device)
        windows = organ_windows(image, mask)
        del image, mask
        probs = self.probabilities(self.latents(windows))
        if "lung" in masks and not any(label in probs for label in ORGAN_LABELS["lung"]):
            notes = (*notes, unscored_note(("lung",), "no lung voxels in the mask"))
        return to_result(probs, self.version, self.weights_sha256, notes)
