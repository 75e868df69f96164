"""Series validation (pure): is this a set of axial CT slices that form a regular volume?

Every rejection is an ``InvalidSeries`` with a reason code and a sentence; nothing is dropped
or reordered silently: identical duplicate slices and localizers mixed into an axial series
are removed with a note, slices are ordered by position along the slice normal (never by
InstanceNumber or file name).

Gantry tilt is rejected with its angle rather than resampled: a tilted acquisition is a head
protocol in practice, and the chest analysis needs true axial geometry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from config import ValidationSettings
from inference import errors
from inference.errors import InvalidSeries
from inference.headers import CT_STORAGE, SliceHeader

GEOMETRY_TOLERANCE = 1e-3  # mm for pixel spacing, direction cosines for orientation


@dataclass(frozen=True)
class OrderedSeries:
    """A valid series' planes in volume order (increasing position along the normal)."""

    slices: tuple[SliceHeader, ...]
    positions: tuple[float, ...]
    spacing: float
    normal: tuple[float, float, float]
    notes: tuple[str, ...]


PixelDigest = Callable[[SliceHeader], str]


def check(
    headers: Sequence[SliceHeader],
    rules: ValidationSettings = ValidationSettings(),
    pixel_digest: PixelDigest | None = None,
) -> OrderedSeries:
    """Validate and order ``headers``; ``pixel_digest`` tells identical duplicates from
    conflicting ones (without it every duplicate position conflicts)."""
    notes: list[str] = []
    if not headers:
        raise InvalidSeries(errors.NO_SERIES, "no images")
    not_ct = [h for h in headers if h.modality != "CT" or h.sop_class_uid not in CT_STORAGE]
    if not_ct:
        raise InvalidSeries(
            errors.NOT_CT,
            f"modality {not_ct[0].modality or 'missing'} / SOP "
            f"class {not_ct[0].sop_class_uid}: not a CT image series",
        )
    images = [h for h in headers if not h.is_localizer]
    if not images:
        raise InvalidSeries(errors.LOCALIZER_ONLY, "only localizer (scout) images")
    if len(images) < len(headers):
        notes.append(f"{len(headers) - len(images)} localizer images left out")
    original = [h for h in images if h.is_original]
    if not original:
        raise InvalidSeries(
            errors.NOT_ORIGINAL,
            f"only derived images (image type {'/'.join(images[0].image_type)})",
        )
    if len(original) < len(images):
        notes.append(f"{len(images) - len(original)} derived images left out")
    images = original

    missing = [
        h for h in images if h.position is None or h.orientation is None or h.pixel_spacing is None
    ]
    if missing:
        raise InvalidSeries(
            errors.MISSING_POSITION,
            f"{len(missing)} images lack position, orientation or pixel spacing",
        )
    _check_consistent(images)

    orientation = np.array(images[0].orientation, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    normal /= np.linalg.norm(normal)
    distances = np.array([np.dot(normal, h.position) for h in images])  # type: ignore[arg-type]
    order = np.argsort(distances, kind="stable")
    ordered = [images[i] for i in order]
    distances = distances[order]
    ordered, distances = _drop_identical_duplicates(ordered, distances, pixel_digest, notes)

    tilt = _tilt_degrees(ordered, normal)
    if tilt > rules.max_tilt_degrees:
        raise InvalidSeries(
            errors.GANTRY_TILT,
            f"gantry tilt of {tilt:.1f} degrees: slice "
            "positions do not advance along the slice normal",
            angle_degrees=round(tilt, 2),
        )
    obliquity = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if obliquity > rules.max_obliquity_degrees:
        raise InvalidSeries(
            errors.NON_AXIAL,
            f"slices are not axial: the slice normal is "
            f"{obliquity:.1f} degrees from the patient's long axis",
            angle_degrees=round(obliquity, 2),
        )

    if len(ordered) < rules.min_slices:
        raise InvalidSeries(
            errors.TOO_FEW_SLICES,
            f"{len(ordered)} slices, at least {rules.min_slices} needed",
            slices=len(ordered),
        )

    steps = np.diff(distances)
    spacing = float(np.median(steps))
    gaps = np.flatnonzero(steps > rules.gap_factor * spacing)
    if gaps.size:
        k = int(gaps[0])
        raise InvalidSeries(
            errors.GAP,
            f"{gaps.size} gaps: {steps[k]:.2f} mm between slices "
            f"{k} and {k + 1} (at {distances[k]:.1f} mm), median spacing "
            f"{spacing:.2f} mm",
            where=[int(g) for g in gaps],
        )
    if steps.max() - steps.min() > GEOMETRY_TOLERANCE * 100:
        notes.append(f"slice spacing varies from {steps.min():.2f} to {steps.max():.2f} mm")
    return OrderedSeries(
        tuple(ordered),
        tuple(float(d) for d in distances),
        spacing,
        (float(normal[0]), float(normal[1]), float(normal[2])),
        tuple(notes),
    )


def _check_consistent(images: Sequence[SliceHeader]) -> None:
    first = images[0]
    tolerance = GEOMETRY_TOLERANCE
    for h in images[1:]:
        if (h.rows, h.columns) != (first.rows, first.columns):
            raise InvalidSeries(
                errors.INCONSISTENT_GEOMETRY,
                f"image size varies ({first.rows}x{first.columns} and {h.rows}x{h.columns})",
            )
        if not np.allclose(h.pixel_spacing, first.pixel_spacing, atol=tolerance):  # type: ignore[arg-type]
            raise InvalidSeries(
                errors.INCONSISTENT_GEOMETRY,
                f"pixel spacing varies ({first.pixel_spacing} and {h.pixel_spacing})",
            )
        if not np.allclose(h.orientation, first.orientation, atol=tolerance):  # type: ignore[arg-type]
            raise InvalidSeries(errors.INCONSISTENT_GEOMETRY, "image orientation varies")


def _drop_identical_duplicates(
    ordered: list[SliceHeader],
    distances: np.ndarray,
    digest: PixelDigest | None,
    notes: list[str],
) -> tuple[list[SliceHeader], np.ndarray]:
    keep = [0]
    dropped = 0
    for i in range(1, len(ordered)):
        if abs(distances[i] - distances[keep[-1]]) > 1e-3:
            keep.append(i)
            continue
        previous = ordered[keep[-1]]
        if digest is not None and digest(previous) == digest(ordered[i]):
            dropped += 1
            continue
        raise InvalidSeries(
            errors.DUPLICATE_POSITION,
            f"two different images at the same position ({distances[i]:.2f} mm along the normal)",
            position_mm=round(float(distances[i]), 3),
        )
    if dropped:
        notes.append(f"{dropped} identical duplicate images dropped")
    return [ordered[i] for i in keep], distances[keep]


def _tilt_degrees(ordered: Sequence[SliceHeader], normal: np.ndarray) -> float:
    """Largest angle between the slice normal and the step from one slice to the next."""
    positions = np.array([h.position for h in ordered], dtype=float)
    steps = np.diff(positions, axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    valid = lengths > 1e-6
    if not valid.any():
        return 0.0
    cosines = np.abs(steps[valid] @ normal) / lengths[valid]
    return float(np.degrees(np.arccos(np.clip(cosines.min(), 0.0, 1.0))))
