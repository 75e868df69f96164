"""A registered diffusion anomaly model -> the resident detector the ensemble runs.

Called once per process (``load``) after the weights store verified both checkpoints.
Honest about cost (diffusion-anomaly.md, "Cost"): the card's procedure is about 1,500
network evaluations per slice, seconds on a GPU and about 43 minutes per 256x256 slice on
two CPU threads, so in ``full`` mode the detector does not run without a GPU and says why
(``NotRunHere``: every output lists it among the analyzers not run); ``reduced`` mode
respaces the schedule to a few steps and runs a few slices anywhere, and its version, its
finding and its key images say that it is reduced.

``analyze`` takes the lung slices of ``[neural.anomaly]``, windows them with the card's HU
window to [-1, 1], resizes them to the card's image size, runs them in batches, resizes
each map back to the slice and sums it up (``maps.summarise``). The first step's noise is
seeded by slice index, so a series gives the same result every time.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from config import AnomalySettings, NeuralSettings
from inference.analyzer import NotRunHere, Segmented
from inference.anomaly import maps as anomaly_maps
from inference.anomaly.card import CardError, ModelCard
from inference.anomaly.checkpoint import load_classifier, load_unet
from inference.anomaly.diffusion import Schedule, anomaly_map, linear_betas, network_evaluations
from inference.anomaly.model import Classifier, ClassifierConfig, UNet, UNetConfig
from inference.anomaly.results import CODE_VERSION, NAME, TITLE, to_result
from inference.device import pick_device
from inference.findings import AnalyzerResult, SliceMap
from inference.strict import CheckpointError, LoadError
from inference.weights_store import ModelEntry

log = logging.getLogger(__name__)

HEALTHY = 0
FULL_COST = (
    "about 1,500 network evaluations per slice (about 43 min per 256x256 slice on 2 CPU threads)"
)


@dataclass(frozen=True)
class Procedure:
    """How the detector runs: the (respaced) schedule, the noise level in its steps, the
    guidance scale, and a note for the outputs when it is not the card's procedure."""

    schedule: Schedule
    noise_level: int
    scale: float
    note: str = ""

    @classmethod
    def from_card(cls, card: ModelCard, settings: AnomalySettings) -> Procedure:
        betas = linear_betas(card.diffusion_steps)
        if settings.mode == "reduced":
            steps = min(settings.reduced_steps, card.diffusion_steps)
            schedule = Schedule.create(betas, reduced_spacing(card.diffusion_steps, steps))
        else:
            schedule = Schedule.create(betas, card.timestep_respacing)
        level = max(2, round(schedule.steps * card.noise_fraction))
        note = ""
        if settings.mode == "reduced":
            note = (
                f"REDUCED mode: {schedule.steps} of {card.diffusion_steps} steps, noise level "
                f"{level}, at most {settings.reduced_max_slices} slices; not the card's procedure"
            )
        return cls(schedule, level, card.guidance_scale, note)

    @property
    def evaluations(self) -> tuple[int, int]:
        return network_evaluations(self.noise_level)


def reduced_spacing(total: int, steps: int) -> str:
    """An even integer stride when one gives ``steps`` (the noise level then lands on the
    card's timestep exactly: 500 of 1000 is index 10 of ddim20), else even sections."""
    if any(len(range(0, total, stride)) == steps for stride in range(1, total)):
        return f"ddim{steps}"
    return str(steps)


def window(slices: np.ndarray, card: ModelCard) -> Tensor:
    """HU slices (n, y, x) -> (n, 1, size, size) in [-1, 1] through the card's window."""
    low, high = card.hu_window
    x = torch.from_numpy(np.asarray(slices, dtype=np.float32))
    x = ((x - low) / (high - low)).clamp(0.0, 1.0) * 2.0 - 1.0
    size = (card.image_size, card.image_size)
    return torch.nn.functional.interpolate(
        x[:, None], size=size, mode="bilinear", align_corners=False, antialias=True
    )


class AnomalyDetector:
    """The ``diffusion-anomaly`` analyzer (``Analyzer[Segmented]``)."""

    name = NAME

    def __init__(
        self,
        unet: UNet,
        classifier: Classifier,
        card: ModelCard,
        procedure: Procedure,
        settings: AnomalySettings,
        device: torch.device,
        version: str,
        weights_sha256: tuple[str, ...],
    ) -> None:
        # gradients flow to the slice only (the guidance), never to the weights
        self.unet = unet.to(device).eval().requires_grad_(False)
        self.classifier = classifier.to(device).eval().requires_grad_(False)
        self.card = card
        self.procedure = procedure
        self.settings = settings
        self.device = device
        self.version = version
        self.weights_sha256 = weights_sha256
        self._lock = threading.Lock()

    @property
    def reduced(self) -> bool:
        return bool(self.procedure.note)

    def select(self, needs: Segmented) -> list[int]:
        """The lung slices to run, as ``[neural.anomaly]`` says."""
        s = self.settings
        limit = s.reduced_max_slices if self.reduced else s.max_slices
        if s.slices == "flagged":
            return anomaly_maps.flagged(needs.lungs, needs.masks, limit)
        return anomaly_maps.every_kth(needs.lungs, s.slice_stride, limit)

    def _denoise(self, x: Tensor, t: Tensor) -> Tensor:
        y = torch.full((x.shape[0],), HEALTHY, dtype=torch.long, device=x.device)
        return self.unet(x, t, y)[:, : x.shape[1]]  # type: ignore[no-any-return]

    def maps(self, hu: np.ndarray, indices: list[int]) -> np.ndarray:
        """Anomaly maps of the slices ``hu`` (n, y, x), on their own grid."""
        out = np.zeros(hu.shape, dtype=np.float32)
        size = self.card.image_size
        for start in range(0, len(hu), self.settings.batch_size):
            chunk = slice(start, start + self.settings.batch_size)
            x0 = window(hu[chunk], self.card).to(self.device)
            noise = torch.stack(
                [
                    torch.randn(1, size, size, generator=torch.Generator().manual_seed(z))
                    for z in indices[chunk]
                ]
            ).to(self.device)
            trace = anomaly_map(
                self.procedure.schedule,
                self._denoise,
                self.classifier,
                x0,
                noise,
                noise_level=self.procedure.noise_level,
                scale=self.procedure.scale,
            )
            back = torch.nn.functional.interpolate(
                trace.anomaly[:, None], size=hu.shape[1:], mode="bilinear", align_corners=False
            )
            out[chunk] = back[:, 0].float().cpu().numpy()
        return out

    def analyze(self, needs: Segmented, /) -> AnalyzerResult:
        volume = needs.volume
        indices = self.select(needs)
        if not indices:
            raise ValueError("no axial slice inside the lung mask")
        with self._lock:
            values = self.maps(np.asarray(volume.voxels[indices]), indices)
        # an evenly sampled slice stands for its share of the lung slices; a flagged one for
        # itself (the volume is then that of the analysed slices only)
        slab = 1.0
        if self.settings.slices == "stride":
            slab = max(1.0, len(anomaly_maps.lung_slices(needs.lungs)) / len(indices))
        summary = anomaly_maps.summarise(
            values,
            indices,
            needs.lungs,
            needs.masks["lung_left"],
            volume,
            percentile=self.card.percentile,
            threshold=self.card.threshold,
            map_threshold=self.card.map_threshold,
            slab=slab,
            note=self.procedure.note,
        )
        shown = SliceMap(
            f"{TITLE} map (|slice - healthy reconstruction|)",
            tuple(indices),
            values,
            scale=max(2.0 * self.card.map_threshold, 1e-6),
            note=self.procedure.note,
        )
        return to_result(summary, self.version, self.weights_sha256, (shown,))


def read_card(store: Path, entry: ModelEntry) -> ModelCard:
    if not entry.card:
        return ModelCard()
    try:
        return ModelCard.read(store / entry.card)
    except CardError as exc:
        raise LoadError(f"{entry.name}: card {entry.card}: {exc}") from exc


def configs(card: ModelCard) -> tuple[UNetConfig, ClassifierConfig]:
    """The networks the card describes (the paper's 256 models unless it says otherwise)."""
    unet = UNetConfig.from_original(card.unet) if card.unet else UNetConfig()
    classifier = (
        ClassifierConfig.from_original(card.classifier) if card.classifier else ClassifierConfig()
    )
    for what, size in (("unet", unet.image_size), ("classifier", classifier.image_size)):
        if size != card.image_size:
            raise CardError(f"{what} image_size {size} != card image_size {card.image_size}")
    return unet, classifier


def load(
    store: Path, entry: ModelEntry, settings: NeuralSettings, *, cuda: bool | None = None
) -> AnomalyDetector:
    """The detector for ``entry`` (the UNet in ``file``, the classifier in ``companion``,
    the ``card``); ``NotRunHere`` when ``[neural.anomaly]`` keeps it from this machine."""
    mode = settings.anomaly.mode
    if mode == "off":
        raise NotRunHere('not run: [neural.anomaly] mode = "off"')
    if cuda is None:
        device = pick_device(settings.device, settings.cpu_threads)
    else:  # a test standing in for a machine with or without a GPU
        device = torch.device("cuda" if cuda else "cpu")
    if mode == "full" and device.type != "cuda":
        raise NotRunHere(
            f"not run: no GPU on this node; the full procedure is {FULL_COST}; "
            '[neural.anomaly] mode = "reduced" runs a reduced procedure on the CPU'
        )
    if not entry.companion:
        raise LoadError(f"{entry.name}: no classifier checkpoint (register it with --companion)")
    card = read_card(store, entry)
    try:
        unet_cfg, classifier_cfg = configs(card)
        unet = load_unet(store / entry.file, unet_cfg)
        classifier = load_classifier(store / entry.companion, classifier_cfg)
    except (CheckpointError, CardError) as exc:
        raise LoadError(f"{entry.name}: {exc}") from exc
    procedure = Procedure.from_card(card, settings.anomaly)
    version = f"{entry.name}-{entry.version}/code-{CODE_VERSION}"
    if procedure.note:
        version += f"/reduced-{procedure.schedule.steps}-steps"
    unets, classifiers = procedure.evaluations
    log.info(
        "analyzer %s loaded %s %s on %s: %d UNet and %d classifier evaluations per slice%s",
        NAME,
        entry.name,
        entry.version,
        device,
        unets,
        classifiers,
        " (reduced mode)" if procedure.note else "",
    )
    return AnomalyDetector(
        unet,
        classifier,
        card,
        procedure,
        settings.anomaly,
        device,
        version,
        (entry.sha256, entry.companion_sha256),
    )
