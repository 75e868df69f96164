"""The model card registered with the diffusion anomaly checkpoints (``card`` in the
manifest): how the networks were trained to see a CT slice, and how their map is read.

The paper works on brain MRI and chest radiographs; for CT the window, the size and the
thresholds are the site's (diffusion-anomaly.md, "Applying it to CT"), so they travel with
the weights that were trained with them, not in the node's settings. ``unet`` and
``classifier`` hold the original's constructor arguments when the networks are not the
paper's 256 models (the form of the tiny reference's ``tiny_config.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD_KEYS = (
    "image_size",
    "hu_window",
    "diffusion_steps",
    "noise_level",
    "guidance_scale",
    "timestep_respacing",
    "percentile",
    "threshold",
    "map_threshold",
    "unet",
    "classifier",
)


class CardError(ValueError):
    """A card that cannot describe how to run the model; the message names the key."""


@dataclass(frozen=True)
class ModelCard:
    """``hu_window`` (low, high) maps to [-1, 1]; the procedure is ``noise_level`` steps of
    ``diffusion_steps`` (respaced by ``timestep_respacing``, "" = all, as the paper's
    ddim1000) with ``guidance_scale``; the series score is the ``percentile`` of the map
    inside the lungs, compared with ``threshold``; a pixel is anomalous above
    ``map_threshold``."""

    image_size: int = 256
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    diffusion_steps: int = 1000
    noise_level: int = 500
    guidance_scale: float = 100.0
    timestep_respacing: str = ""
    percentile: float = 99.0
    threshold: float = 0.2
    map_threshold: float = 0.3
    unet: dict[str, Any] = field(default_factory=dict)
    classifier: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        low, high = self.hu_window
        if not low < high:
            raise CardError(f"hu_window {self.hu_window}: low must be below high")
        if not 2 <= self.noise_level <= self.diffusion_steps:
            raise CardError(f"noise_level {self.noise_level} outside 2..{self.diffusion_steps}")
        if not 0 < self.percentile <= 100:
            raise CardError(f"percentile {self.percentile} outside (0, 100]")
        if self.threshold <= 0 or self.map_threshold <= 0:
            raise CardError("threshold and map_threshold must be positive")
        if self.image_size % 32:
            raise CardError(f"image_size {self.image_size} is not a multiple of 32")

    @property
    def noise_fraction(self) -> float:
        """How far into the schedule the slice is encoded (0.5 in the paper)."""
        return self.noise_level / self.diffusion_steps

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelCard:
        unknown = sorted(set(raw) - set(CARD_KEYS))
        if unknown:
            raise CardError(f"unknown card keys {unknown}")
        values = dict(raw)
        if "hu_window" in values:
            low, high = values["hu_window"]
            values["hu_window"] = (float(low), float(high))
        try:
            return cls(**values)
        except TypeError as exc:
            raise CardError(str(exc)) from exc

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CardError(f"{path.name}: {exc}") from exc
        if not isinstance(raw, dict):
            raise CardError(f"{path.name}: a card is a JSON object")
        return cls.from_json(raw)
