"""The MedNeXt model card: what a set of weights predicts and how its input is made.

Torch-free (the node's schema and reports read it without loading a model). A card is a JSON
file stored with the weights in the weights store (``ctnode weights register ... --card``,
or written by ``ctnode mednext train``); it names the labels in the order of the head's
outputs with each label's operating threshold, the variant (S, B, M, L, or ``custom`` with
its sizes), the kernel size, and the preprocessing: voxel spacing, input size, HU window,
the margin kept around the lungs. Nothing of this is guessed from the weights file.

The seeds' model predicts :data:`DEFAULT_LABELS`: CT-RATE's 18 labels and four more; a
site's card may name others (``inference.mednext.results`` says how they are coded and how
the fusion features are named).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.codes import CT_RATE_LABELS, MEDNEXT_EXTRA_LABELS

FORMAT = "ctnode-mednext-card"
FORMAT_VERSION = 1

# The seeds' 22 labels, in the order of the head's outputs.
DEFAULT_LABELS: tuple[str, ...] = (*CT_RATE_LABELS, *MEDNEXT_EXTRA_LABELS)


@dataclass(frozen=True)
class Architecture:
    """The sizes that make a variant (MedNeXt.md, "Variants"): base width, expansion ratio
    and block count of the 9 stages (enc 0-3, bottleneck, dec 3-0), and whether upstream
    trains it with gradient checkpointing (M, L; no numeric effect)."""

    n_channels: int
    exp_r: tuple[int, ...]
    block_counts: tuple[int, ...]
    checkpointing: bool = False

    def __post_init__(self) -> None:
        if len(self.exp_r) != 9 or len(self.block_counts) != 9:
            raise CardError("architecture: exp_r and block_counts need 9 entries each")
        if self.n_channels < 1 or min(self.exp_r) < 1 or min(self.block_counts) < 1:
            raise CardError("architecture: sizes must be positive")


_B_EXP = (2, 3, 4, 4, 4, 4, 4, 3, 2)
VARIANTS: dict[str, Architecture] = {
    "S": Architecture(32, (2,) * 9, (2,) * 9),
    "B": Architecture(32, _B_EXP, (2,) * 9),
    "M": Architecture(32, _B_EXP, (3, 4, 4, 4, 4, 4, 4, 4, 3), checkpointing=True),
    "L": Architecture(
        32, (3, 4, 8, 8, 8, 8, 8, 4, 3), (3, 4, 8, 8, 8, 8, 8, 4, 3), checkpointing=True
    ),
}
# Smallest size the 4 halvings of the encoder divide.
MULTIPLE = 16


class CardError(ValueError):
    """A model card that cannot describe a MedNeXt classifier; the message says what."""


@dataclass(frozen=True)
class Preprocessing:
    """How a volume becomes the model input (``inference.mednext.preprocess``): resampled to
    ``spacing_mm`` (z, y, x), cut to the lungs' bounding box plus ``lung_margin_mm``, then
    centred in ``input_size`` voxels (z, y, x; multiples of 16); HU clipped to
    ``hu_window`` and scaled to [-1, 1]."""

    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    input_size: tuple[int, int, int] = (160, 192, 192)
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    lung_margin_mm: float = 10.0

    def __post_init__(self) -> None:
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise CardError(f"spacing_mm must be 3 positive numbers, not {self.spacing_mm}")
        if len(self.input_size) != 3 or any(n < MULTIPLE or n % MULTIPLE for n in self.input_size):
            raise CardError(
                f"input_size must be 3 multiples of {MULTIPLE} (the encoder halves each "
                f"axis 4 times), not {self.input_size}"
            )
        if math.prod(n // MULTIPLE for n in self.input_size) < 2:
            raise CardError(
                f"input_size {self.input_size} leaves one voxel at the bottleneck, where the "
                "per-channel normalisation needs more: make one axis 32 or more"
            )
        low, high = self.hu_window
        if not low < high:
            raise CardError(f"hu_window must be [low, high] with low < high, not {self.hu_window}")
        if self.lung_margin_mm < 0:
            raise CardError("lung_margin_mm must not be negative")


@dataclass(frozen=True)
class ModelCard:
    """One MedNeXt classifier's card; see the module docstring. ``training`` holds what
    ``ctnode mednext train`` measured (data, per-label AUROC), for people, not the node."""

    name: str
    version: str
    labels: tuple[str, ...]
    thresholds: tuple[float, ...]
    variant: str = "B"
    kernel_size: int = 3
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    architecture: Architecture | None = None
    training: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.labels:
            raise CardError("a card needs at least one label")
        if len(set(self.labels)) != len(self.labels):
            raise CardError("labels must be unique")
        for label in self.labels:
            if not label.strip() or len(label) > 64:
                raise CardError(f"label {label!r} must be 1 to 64 characters (a DICOM LO)")
        if len(self.thresholds) != len(self.labels):
            raise CardError(
                f"{len(self.labels)} labels but {len(self.thresholds)} thresholds: "
                "one operating threshold per label"
            )
        if not all(0.0 <= t <= 1.0 and math.isfinite(t) for t in self.thresholds):
            raise CardError("thresholds must be probabilities in [0, 1]")
        if self.kernel_size not in (3, 5):
            raise CardError(f"kernel_size must be 3 or 5, not {self.kernel_size}")
        if self.variant == "custom":
            if self.architecture is None:
                raise CardError("variant 'custom' needs an architecture (n_channels, exp_r, ...)")
        elif self.variant not in VARIANTS:
            raise CardError(f"variant must be one of S, B, M, L or custom, not {self.variant!r}")

    @property
    def arch(self) -> Architecture:
        """The sizes of the network the weights belong to."""
        return self.architecture or VARIANTS[self.variant]

    def threshold(self, label: str) -> float:
        return self.thresholds[self.labels.index(label)]

    def to_json(self) -> dict[str, Any]:
        pre = self.preprocessing
        data: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "variant": self.variant,
            "kernel_size": self.kernel_size,
            "labels": [
                {"name": n, "threshold": t}
                for n, t in zip(self.labels, self.thresholds, strict=True)
            ],
            "preprocessing": {
                "spacing_mm": list(pre.spacing_mm),
                "input_size": list(pre.input_size),
                "hu_window": list(pre.hu_window),
                "lung_margin_mm": pre.lung_margin_mm,
            },
        }
        if self.architecture is not None:
            arch = self.architecture
            data["architecture"] = {
                "n_channels": arch.n_channels,
                "exp_r": list(arch.exp_r),
                "block_counts": list(arch.block_counts),
                "checkpointing": arch.checkpointing,
            }
        if self.training:
            data["training"] = dict(self.training)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelCard:
        """Parse a card; ``CardError`` names the field that is wrong."""
        if data.get("format") != FORMAT:
            raise CardError(f"not a MedNeXt model card (format {data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise CardError(f"card format_version {data.get('format_version')!r} is not 1")
        try:
            labels = [(str(x["name"]), float(x["threshold"])) for x in data["labels"]]
            pre = data.get("preprocessing", {})
            preprocessing = Preprocessing(
                spacing_mm=_floats(pre.get("spacing_mm", (2.0, 2.0, 2.0)), 3),  # type: ignore[arg-type]
                input_size=_ints(pre.get("input_size", (160, 192, 192)), 3),  # type: ignore[arg-type]
                hu_window=_floats(pre.get("hu_window", (-1000.0, 1000.0)), 2),  # type: ignore[arg-type]
                lung_margin_mm=float(pre.get("lung_margin_mm", 10.0)),
            )
            arch_data = data.get("architecture")
            arch = None
            if arch_data is not None:
                arch = Architecture(
                    int(arch_data["n_channels"]),
                    _ints(arch_data["exp_r"], 9),
                    _ints(arch_data["block_counts"], 9),
                    bool(arch_data.get("checkpointing", False)),
                )
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                labels=tuple(n for n, _ in labels),
                thresholds=tuple(t for _, t in labels),
                variant=str(data.get("variant", "B")),
                kernel_size=int(data.get("kernel_size", 3)),
                preprocessing=preprocessing,
                architecture=arch,
                training=dict(data.get("training") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CardError):
                raise
            raise CardError(f"malformed model card: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CardError(f"cannot read model card {path.name}: {exc}") from exc
        if not isinstance(data, dict):
            raise CardError(f"{path.name} is not a JSON object")
        return cls.from_json(data)

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        return path


def _floats(values: Sequence[Any], n: int) -> tuple[float, ...]:
    if len(values) != n:
        raise CardError(f"expected {n} numbers, got {list(values)}")
    return tuple(float(v) for v in values)


def _ints(values: Sequence[Any], n: int) -> tuple[int, ...]:
    if len(values) != n:
        raise CardError(f"expected {n} integers, got {list(values)}")
    return tuple(int(v) for v in values)
