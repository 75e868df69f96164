"""Small synthetic chest CTs for fusion tests: a body, two lungs, optionally a ground-glass
lesion; 40 slices of 96 x 96 (5 mm, 3.5 mm pixels), fast enough to analyse by the dozen."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tests.factory import ct_series, write_series

Grid = npt.NDArray[np.float64]

LEFT_LUNG = (65.0, 0.0, 100.0)  # patient x > 0 is left (LPS)


def chest_phantom(
    folder: Path,
    seed: str,
    *,
    lesion_mm: float = 0.0,
    lesion_hu: float = -500.0,
    lung_hu: float = -850.0,
) -> list[Path]:
    """Write one study (one series) to ``folder``; a lesion of ``lesion_mm`` diameter (0 =
    none) sits in the left lung. Noise and the lung density vary with ``seed``."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:4]))
    offset = rng.uniform(-8.0, 8.0, size=3)

    def hu(z: Grid, y: Grid, x: Grid) -> Grid:
        values = np.full(np.broadcast(z, y, x).shape, -1000.0)
        values[(x / 150) ** 2 + (y / 110) ** 2 <= 1] = 40.0
        for cx in (-65.0, 65.0):
            values[((x - cx) / 50) ** 2 + (y / 70) ** 2 + ((z - 100) / 90) ** 2 <= 1] = lung_hu
        if lesion_mm > 0:
            r = lesion_mm / 2
            cx, cy, cz = np.add(LEFT_LUNG, offset)
            values[((x - cx) / r) ** 2 + ((y - cy) / r) ** 2 + ((z - cz) / r) ** 2 <= 1] = lesion_hu
        return values + rng.normal(0.0, 12.0, values.shape)

    series = ct_series(
        40,
        96,
        96,
        pixel_spacing=3.5,
        slice_spacing=5.0,
        hu=hu,
        origin=(-168.0, -168.0, 0.0),
        seed=seed,
    )
    return write_series(series, folder)
