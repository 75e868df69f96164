"""Small synthetic chest volumes whose labels depend on what is in them, and a tiny MedNeXt
card, for training tests and the benchmark: a body of soft tissue, two lungs (their mask is
given, as the node's segmentation would give it) and, each with probability one half, a
nodule in a lung, emphysematous lungs, and an enlarged heart."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from inference.mednext.card import Architecture, ModelCard, Preprocessing

LABELS = ("Lung nodule", "Pleural effusion", "Cardiomegaly")
SHAPE = (24, 48, 48)
SPACING = (6.0, 5.0, 5.0)
TINY = Architecture(n_channels=4, exp_r=(2,) * 9, block_counts=(1,) * 9)


def tiny_card(name: str = "tiny-mednext", labels: tuple[str, ...] = LABELS) -> ModelCard:
    """A custom (tiny) variant whose input is the synthetic chest at its own spacing."""
    return ModelCard(
        name=name,
        version="1",
        labels=labels,
        thresholds=(0.5,) * len(labels),
        variant="custom",
        kernel_size=3,
        preprocessing=Preprocessing(
            spacing_mm=(9.0, 7.5, 7.5), input_size=(16, 32, 32), lung_margin_mm=10.0
        ),
        architecture=TINY,
    )


def chest(
    rng: np.random.Generator, y: tuple[int, ...]
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.bool_]]:
    """(HU volume, lung mask) on ``SHAPE`` showing the findings ``y`` (LABELS order)."""
    z, yy, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")
    cz, cy, cx = (np.array(SHAPE) - 1) / 2 + rng.uniform(-1.5, 1.5, 3)
    hu = np.full(SHAPE, -1000.0)
    hu[((yy - cy) / 19) ** 2 + ((x - cx) / 22) ** 2 <= 1] = 40.0
    lungs = np.zeros(SHAPE, dtype=bool)
    for side in (-1, 1):
        lung = ((z - cz) / 10) ** 2 + ((yy - cy) / 13) ** 2 + ((x - cx - side * 10) / 8) ** 2 <= 1
        lungs |= lung
    hu[lungs] = rng.uniform(-870, -830)
    if y[1]:  # pleural effusion: fluid in the dependent (posterior) part of both lungs
        hu[lungs & (yy > cy + 4)] = 15.0
    heart = 6.0 if y[2] else 3.0  # cardiomegaly: a larger heart between the lungs
    hu[
        ((z - cz) / (heart + 1)) ** 2 + ((yy - cy - 4) / heart) ** 2 + ((x - cx) / heart) ** 2 <= 1
    ] = 45
    if y[0]:  # two calcified nodules of about 4.5 voxels' radius in the lungs
        candidates = np.argwhere(lungs & ((z - cz) ** 2 < 16) & (yy < cy))
        for nz, ny, nx in candidates[rng.integers(len(candidates), size=2)]:
            hu[((z - nz) ** 2 + (yy - ny) ** 2 + (x - nx) ** 2) <= 20] = 400.0
    hu += rng.normal(0.0, 15.0, SHAPE)
    return hu.astype(np.int16), lungs


def dataset(
    n: int, seed: int
) -> tuple[list[tuple[npt.NDArray[np.int16], npt.NDArray[np.bool_]]], npt.NDArray[np.int_]]:
    """``n`` synthetic chests and their labels (studies x LABELS)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=(n, len(LABELS)))
    return [chest(rng, tuple(int(v) for v in row)) for row in y], y
