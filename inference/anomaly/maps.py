"""Which slices the detector runs on, and what its maps come to: pure numpy, no torch.

Slices: axial slices inside the lung mask, every k-th (the lung extent sampled evenly) or
those where a cheaper analyzer (the quantitative segmentation's overlays) flags something,
most covered first. The series: the card's percentile of the map inside the lungs; the
anomalous voxels (map above the card's level, inside the lungs) as a volume, each analysed
slice standing for the k slices it samples; their largest connected region (6-connected
across the analysed stack) and its centre in patient coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from inference import codes
from inference.anomaly.results import Summary
from inference.volume import Volume

Mask = npt.NDArray[np.bool_]
FLAG_MASKS = ("emphysema", "ground_glass", "consolidation")


def lung_slices(lungs: Mask, min_pixels: int = 1) -> list[int]:
    """The z indices whose axial slice holds lung."""
    return [int(z) for z in np.flatnonzero(lungs.sum(axis=(1, 2)) >= min_pixels)]


def every_kth(lungs: Mask, stride: int, limit: int) -> list[int]:
    """Every ``stride``-th lung slice from the middle of the first stride, then thinned
    evenly to at most ``limit``."""
    inside = lung_slices(lungs)
    picked = inside[stride // 2 :: stride] or inside[:1]
    if len(picked) > limit:
        keep = np.linspace(0, len(picked) - 1, limit).round().astype(int)
        picked = [picked[i] for i in sorted(set(keep.tolist()))]
    return picked


def flagged(lungs: Mask, masks: Mapping[str, Mask], limit: int) -> list[int]:
    """Lung slices where the quantitative overlays cover most, at most ``limit``, in z order;
    none flagged: the lung's middle slice."""
    cover = np.zeros(lungs.shape[0], dtype=np.int64)
    for name in FLAG_MASKS:
        if name in masks:
            cover += (masks[name] & lungs).sum(axis=(1, 2))
    order = [int(z) for z in np.argsort(-cover, kind="stable") if cover[z] > 0][:limit]
    if not order:
        inside = lung_slices(lungs)
        return inside[len(inside) // 2 : len(inside) // 2 + 1]
    return sorted(order)


def summarise(
    maps: npt.NDArray[np.float32],
    slices: Sequence[int],
    lungs: Mask,
    left: Mask,
    volume: Volume,
    *,
    percentile: float,
    threshold: float,
    map_threshold: float,
    slab: float,
    note: str = "",
) -> Summary:
    """The series' numbers from ``maps`` (len(slices), y, x) on the volume's grid; ``slab``
    is how many slices each analysed one stands for."""
    inside = lungs[list(slices)]
    values = maps[inside]
    level = float(np.percentile(values, percentile)) if values.size else 0.0
    anomalous = inside & (maps > map_threshold)
    dz, dy, dx = volume.spacing
    voxel_ml = dz * dy * dx * slab / 1000.0
    labels, count = ndimage.label(anomalous)
    centre = None
    key = None
    largest_ml = 0.0
    side = None
    if count:
        sizes = np.bincount(labels.ravel())[1:]
        biggest = int(np.argmax(sizes)) + 1
        largest_ml = float(sizes[biggest - 1]) * voxel_ml
        k, y, x = (float(c) for c in ndimage.center_of_mass(labels == biggest))
        zs = np.asarray(slices, dtype=np.float64)
        z = float(np.interp(k, np.arange(len(zs)), zs))
        present = sorted({int(i) for i in np.nonzero(labels == biggest)[0]})
        key = int(slices[min(present, key=lambda i: abs(i - k))])
        centre_lps = volume.affine @ np.array([x, y, z, 1.0])
        centre = (float(centre_lps[0]), float(centre_lps[1]), float(centre_lps[2]))
        region = labels == biggest
        in_left = int((region & left[list(slices)]).sum())
        side = codes.LEFT if 2 * in_left > int(region.sum()) else codes.RIGHT
    diameter = 2.0 * (3.0 * largest_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    return Summary(
        percentile=level,
        threshold=threshold,
        volume_ml=float(anomalous.sum()) * voxel_ml,
        largest_ml=largest_ml,
        centre=centre,
        key_slice=key,
        diameter_mm=float(diameter),
        laterality=side,
        slices=tuple(int(z) for z in slices),
        note=note,
    )
