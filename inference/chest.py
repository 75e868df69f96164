"""Does the volume cover the chest? Decided from the image, not BodyPartExamined (empty in
both real chest CTs and unreliable in general).

Air-filled lungs are air (< -400 HU) enclosed by the body: per axial slice the body is
everything denser than -300 HU with its holes filled, and enclosed air is what the filling
added below -400 HU. A slice counts as a lung slice when that enclosed air covers at least
``min_lung_area_cm2`` (paranasal sinuses and mastoid cells in a head CT stay far below; a
chest CT's lungs cover 100-300 cm^2 at mid-chest). The chest is covered when lung slices
span at least ``min_lung_extent_mm`` craniocaudally. Sampled at 4x in-plane downsampling:
the decision needs areas of tens of cm^2, not detail.
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy import ndimage

from config import ValidationSettings
from inference import errors
from inference.errors import InvalidSeries
from inference.volume import Volume

BODY_HU = -300
AIR_HU = -400


@dataclass(frozen=True)
class ChestCoverage:
    lung_extent_mm: float
    lung_slices: int
    max_lung_area_cm2: float


def coverage(volume: Volume, rules: ValidationSettings = ValidationSettings()) -> ChestCoverage:
    step = 4
    dz, dy, dx = volume.spacing
    pixel_cm2 = (dy * step) * (dx * step) / 100.0
    z_step = max(1, round(5.0 / dz))
    indices = list(range(0, volume.shape[0], z_step))
    areas = []
    for k in indices:
        plane = volume.voxels[k, ::step, ::step]
        body = ndimage.binary_fill_holes(plane > BODY_HU)
        enclosed = body & (plane < AIR_HU)
        areas.append(float(enclosed.sum()) * pixel_cm2)
    lungs = [k for k, area in zip(indices, areas, strict=True) if area >= rules.min_lung_area_cm2]
    extent = (max(lungs) - min(lungs) + z_step) * dz if lungs else 0.0
    return ChestCoverage(extent, len(lungs), max(areas, default=0.0))


def check_chest(volume: Volume, rules: ValidationSettings = ValidationSettings()) -> ChestCoverage:
    """Raise ``not_chest`` unless air-filled lungs span the configured extent."""
    found = coverage(volume, rules)
    if found.lung_extent_mm < rules.min_lung_extent_mm:
        raise InvalidSeries(
            errors.NOT_CHEST,
            f"no chest: air-filled lungs span "
            f"{found.lung_extent_mm:.0f} mm (largest enclosed air "
            f"{found.max_lung_area_cm2:.0f} cm^2), at least "
            f"{rules.min_lung_extent_mm:.0f} mm needed",
            lung_extent_mm=round(found.lung_extent_mm, 1),
        )
    return found
