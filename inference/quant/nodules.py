"""Nodule candidates: compact solid or part-solid blobs of 4-30 mm inside the lungs.

Nodules and vessels are told apart by shape, with the Hessian-based enhancement filters of
Li, Sone & Doi (Med Phys 2003;30:2040): at a bright blob all three Hessian eigenvalues are
strongly negative (the "dot" filter |l3|^2/|l1|, with |l1| >= |l2| >= |l3|, responds), at a
vessel one is near zero (a tube responds to the "line" filter instead, and the dot filter
stays low even where the vessel is seen end-on, because along its axis the intensity does not
fall off). The filter runs at three scales (sigma 1.5, 2.5 and 4 mm, for 4-30 mm nodules) on
a 2 mm grid, scale-normalised by sigma^2.

A candidate is a local maximum of the dot response inside the lungs, at least 3 mm from the
lung envelope's border (chest wall, mediastinum, diaphragm domes and airway walls lie on or
beyond it: the classic false positives) and denser than -500 HU at its centre (solid and the
solid part of part-solid nodules, cf. the Fleischner glossary, Hansell et al., Radiology
2008;246:697). Its extent is the region above -500 HU around the centre, limited to a sphere
of 2 sigma*sqrt(3) (the blob radius the scale matches), so an attached vessel is not counted.
The N strongest remain, ranked by dot response times solidity (HU above -500 over 500,
capped at 1): vessel junctions seen end-on respond too, but are small and less dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from inference.quant.segmentation import LungMasks
from inference.volume import Volume

GRID_MM = 2.0
SCALES_MM = (1.5, 2.5, 4.0)
DENSE_HU = -500
MARGIN_MM = 3.0
MIN_MM, MAX_MM = 4.0, 30.0
MIN_DOT = 80.0
MAX_PEAKS = 40


@dataclass(frozen=True)
class NoduleCandidate:
    centre: tuple[float, float, float]  # patient LPS mm
    slice_index: int
    voxel: tuple[int, int, int]  # (z, y, x) on the volume grid
    diameter_mm: float  # longest diameter (along the principal axis)
    volume_ml: float
    mean_hu: float
    dot: float  # dot response x solidity: the ranking score


def find(
    volume: Volume, masks: LungMasks, values: npt.NDArray[np.float32], limit: int = 5
) -> list[NoduleCandidate]:
    factors = tuple(max(1, round(GRID_MM / s)) for s in volume.spacing)
    shape = tuple(n // f * f for n, f in zip(volume.shape, factors, strict=True))
    lungs = _block(masks.lungs, factors, shape, "any")
    if not lungs.any():
        return []
    spacing = tuple(s * f for s, f in zip(volume.spacing, factors, strict=True))
    # work in the lungs' bounding box (plus the widest filter's reach): the filters and the
    # Hessian cost per voxel, and most of a CT's field of view is not lung
    reach = [int(np.ceil(3 * max(SCALES_MM) / s)) + 1 for s in spacing]
    box = tuple(
        slice(max(0, int(i.min()) - r), int(i.max()) + r + 1)
        for i, r in zip(np.nonzero(lungs), reach, strict=True)
    )
    offset = np.array([b.start for b in box])
    lungs = lungs[box]
    hu = _block(values, factors, shape, "mean").astype(np.float32)[box]
    interior = ndimage.distance_transform_edt(lungs, sampling=spacing) > MARGIN_MM
    dense = interior & (hu > DENSE_HU)
    if not dense.any():
        return []
    response = np.zeros(hu.shape, np.float32)
    best_sigma = np.zeros(hu.shape, np.float32)
    where = np.nonzero(dense)
    for sigma_mm in SCALES_MM:
        dot = _dot(hu, where, sigma_mm, spacing)
        better = dot > response[where]
        response[where] = np.where(better, dot, response[where])
        best_sigma[where] = np.where(better, sigma_mm, best_sigma[where])
    peaks = (response == ndimage.maximum_filter(response, size=5)) & (response > MIN_DOT)
    # rank by blob response weighted by solidity: end-on vessel junctions respond too, but
    # are small and, averaged over 2 mm, far less dense than a solid nodule
    solidity = np.clip((hu - DENSE_HU) / 500.0, 0.0, 1.0)
    score = response * solidity
    coordinates = np.argwhere(peaks)
    order = np.argsort(-score[peaks])[:MAX_PEAKS]
    found = []
    for z, y, x in coordinates[order]:
        sigma_mm = float(best_sigma[z, y, x])
        radius_mm = 2 * sigma_mm * np.sqrt(3)
        region, mean_hu, longest = _extent(hu, dense, (z, y, x), radius_mm, spacing)
        voxel_ml = float(np.prod(spacing)) / 1000
        volume_ml = region * voxel_ml
        equivalent = 2 * (3 * volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
        if not MIN_MM <= equivalent <= MAX_MM:
            continue
        diameter = max(longest, equivalent)
        full = tuple(
            min(int((c + o) * f + f // 2), n - 1)
            for c, o, f, n in zip((z, y, x), offset, factors, volume.shape, strict=True)
        )
        found.append(
            NoduleCandidate(
                volume.to_patient(*full),
                full[0],
                full,  # type: ignore[arg-type]
                round(diameter, 1),
                round(volume_ml, 3),
                round(mean_hu, 1),
                round(float(score[z, y, x]), 1),
            )
        )
    found.sort(key=lambda c: -c.dot)
    return _distinct(found, spacing)[:limit]


def _block(
    a: npt.NDArray[np.generic], factors: tuple[int, ...], shape: tuple[int, ...], op: str
) -> npt.NDArray[np.generic]:
    fz, fy, fx = factors
    z, y, x = shape
    blocks = a[:z, :y, :x].reshape(z // fz, fz, y // fy, fy, x // fx, fx)
    result = blocks.mean(axis=(1, 3, 5)) if op == "mean" else blocks.any(axis=(1, 3, 5))
    return np.asarray(result)


def _dot(
    hu: npt.NDArray[np.float32],
    where: tuple[npt.NDArray[np.intp], ...],
    sigma_mm: float,
    spacing: tuple[float, ...],
) -> npt.NDArray[np.float32]:
    """Li et al. dot-enhancement response at ``where``, scale-normalised."""
    sigma = [sigma_mm / s for s in spacing]
    smooth = ndimage.gaussian_filter(hu, sigma=sigma, truncate=3.0)
    first = np.gradient(smooth, *spacing)  # one smoothing, then finite differences
    hessian = np.empty((where[0].size, 3, 3), np.float32)
    for i in range(3):
        second = np.gradient(first[i], *spacing)
        for j in range(i, 3):
            value = second[j][where] * sigma_mm**2
            hessian[:, i, j] = hessian[:, j, i] = value
    eigen = np.linalg.eigvalsh(hessian)  # ascending: most negative first
    by_size = np.take_along_axis(eigen, np.argsort(-np.abs(eigen), axis=1), axis=1)
    l1, l3 = by_size[:, 0], by_size[:, 2]
    blob = (eigen < 0).all(axis=1)
    result: npt.NDArray[np.float32] = np.where(
        blob, l3**2 / np.maximum(np.abs(l1), 1e-3), 0.0
    ).astype(np.float32)
    return result


def _extent(
    hu: npt.NDArray[np.float32],
    dense: npt.NDArray[np.bool_],
    centre: tuple[int, int, int],
    radius_mm: float,
    spacing: tuple[float, ...],
) -> tuple[int, float, float]:
    r = [int(np.ceil(radius_mm / s)) for s in spacing]
    box = tuple(slice(max(0, c - ri), c + ri + 1) for c, ri in zip(centre, r, strict=True))
    grids = np.ogrid[
        tuple(slice(b.start - c, b.stop - c) for b, c in zip(box, centre, strict=True))
    ]
    distance2 = np.zeros(dense[box].shape, np.float64)
    for g, s in zip(grids, spacing, strict=True):
        distance2 = distance2 + (g * s) ** 2
    local = dense[box] & (distance2 <= radius_mm**2)
    labels, _ = ndimage.label(local)
    own = labels == labels[tuple(c - b.start for c, b in zip(centre, box, strict=True))]
    if not own.any():
        return 0, float("nan"), 0.0
    points = np.argwhere(own) * np.array(spacing)
    spread = points - points.mean(axis=0)
    axis = np.linalg.svd(spread, full_matrices=False)[2][0] if len(points) > 1 else np.zeros(3)
    along = spread @ axis
    longest = float(along.max() - along.min()) + float(np.mean(spacing))
    return int(own.sum()), float(hu[box][own].mean()), longest


def _distinct(found: list[NoduleCandidate], spacing: tuple[float, ...]) -> list[NoduleCandidate]:
    """Drop weaker peaks inside a stronger candidate."""
    kept: list[NoduleCandidate] = []
    for candidate in found:
        if all(
            np.linalg.norm(np.subtract(candidate.centre, k.centre)) > k.diameter_mm / 2 + 2
            for k in kept
        ):
            kept.append(candidate)
    return kept
