"""Volume and organ labels -> fVLM's evaluation windows, as fVLM.md "Preprocessing" and
"Evaluation windows" document.

The volume is resampled to 1 x 1 x 3 mm (x, y, z; trilinear for the image, nearest for the
labels), kept as (z, y, x) with z towards the head, y towards the back and x towards the
patient's left (the DICOM axial order; flipped where a series runs the other way), HU windowed
-1150..350 to 0..1, cropped to the box of all organ labels with 5 slices and 20 voxels of
margin, and padded with 0 (symmetrically) to at least 112 x 256 x 352. Each organ present gets a
window centred on its box, of size max((112, 288, 352), box), shifted to stay inside the volume
and padded at the end to a multiple of the patch (16, 16, 32). The window's label mask keeps its
organ and the other organs that lie wholly inside it (at least 90 % of their voxels, none on the
2-voxel border): those are scored there too, and a label's probability is the mean over the
windows that scored its organ.

Only the window arithmetic is held to the original by the tiny reference; the resampling
(``F.interpolate``, align_corners False, sizes rounded) and the orientation are ours, written
from the facts file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from inference.fvlm.results import ORGANS
from inference.volume import Volume

SPACING_ZYX = (3.0, 1.0, 1.0)
HU_WINDOW = (-1150.0, 350.0)
CROP_MARGIN = (5, 20, 20)
MIN_SHAPE = (112, 256, 352)
ROI = (112, 288, 352)
PATCH = (16, 16, 32)
BORDER = 2
INSIDE = 0.9
# (first, last) voxel index along each axis.
Box = tuple[tuple[int, ...], tuple[int, ...]]


class OrientationError(ValueError):
    """The volume is not an axial stack the model can be fed."""

    reason = "not-axial"


@dataclass(frozen=True)
class Window:
    """One evaluation window: image, its organ's mask (the original's window mask) and the
    labels of every organ scored in it, each (1, 1, D, H, W) padded to the patch multiple;
    where it starts in the volume, its size before padding, and the organs scored in it
    (indices into ``ORGANS``, the window's own organ first)."""

    image: Tensor
    mask: Tensor
    labels: Tensor
    start: tuple[int, int, int]
    size: tuple[int, int, int]
    organs: tuple[int, ...]


def organ_box(mask: Tensor, label: int) -> Box | None:
    """(first, last) voxel index of ``label`` along each axis of a (D, H, W) mask; None when
    absent."""
    hit = mask == label
    first: list[int] = []
    last: list[int] = []
    for axis in range(3):
        along = hit.any(dim=tuple(a for a in range(3) if a != axis)).nonzero()
        if along.shape[0] == 0:
            return None
        first.append(int(along[0, 0]))
        last.append(int(along[-1, 0]))
    return tuple(first), tuple(last)


def window_bounds(
    box: Box,
    shape: tuple[int, ...],
    roi: tuple[int, int, int] = ROI,
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Start and size of an organ's window in a volume of ``shape``: as large as ``roi`` or the
    box (last minus first index, as the original measures it), centred on the box (centre and
    half size rounded down) and shifted to stay inside the volume."""
    starts: list[int] = []
    sizes: list[int] = []
    for first, last, n, want in zip(box[0], box[1], shape, roi, strict=True):
        size = min(n, max(want, last - first))
        start = (first + last) // 2 - size // 2
        starts.append(max(0, min(start, n - size)))
        sizes.append(size)
    return (starts[0], starts[1], starts[2]), (sizes[0], sizes[1], sizes[2])


def pad_to_multiple(x: Tensor, k: tuple[int, int, int] = PATCH) -> Tensor:
    """Pad the last three axes with 0 at the end to multiples of ``k``."""
    pads: list[int] = []
    for n, m in zip(reversed(x.shape[-3:]), reversed(k), strict=True):
        pads += [0, (-n) % m]
    return F.pad(x, pads)


def _inside(
    mask: Tensor, label: int, start: tuple[int, ...], size: tuple[int, ...], total: int, box: Box
) -> bool:
    """Organ ``label`` lies wholly in the window: 90 % of its voxels, none on its border."""
    inner = [(s + BORDER, s + n - BORDER) for s, n in zip(start, size, strict=True)]
    if all(lo <= a and b < hi for (lo, hi), a, b in zip(inner, box[0], box[1], strict=True)):
        return True  # its box clears the border: every voxel is inside
    if any(b < s or a >= s + n for s, n, a, b in zip(start, size, box[0], box[1], strict=True)):
        return False  # not in the window at all
    crop = mask[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))] == label
    count = int(torch.count_nonzero(crop))
    if count == 0 or count < INSIDE * total:
        return False
    inner_crop = crop[tuple(slice(BORDER, n - BORDER) for n in size)]
    return int(torch.count_nonzero(inner_crop)) == count


def organ_windows(
    image: Tensor,
    mask: Tensor,
    roi: tuple[int, int, int] = ROI,
    organs: tuple[int, ...] = tuple(range(len(ORGANS))),
) -> list[Window]:
    """The windows of a (D, H, W) image in [0, 1] and its organ labels (1 lung, 2 heart,
    3 esophagus, 4 aorta), one per organ of ``organs`` present."""
    boxes = {o: box for o in organs if (box := organ_box(mask, o + 1)) is not None}
    counts = torch.bincount(mask.flatten().to(torch.int64), minlength=len(ORGANS) + 1).tolist()
    windows: list[Window] = []
    for organ, box in boxes.items():
        start, size = window_bounds(box, tuple(mask.shape), roi)
        region = tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))
        others = tuple(
            o
            for o in boxes
            if o != organ and _inside(mask, o + 1, start, size, counts[o + 1], boxes[o])
        )
        kept = (organ, *others)
        crop = mask[region]
        zero = torch.zeros_like(crop)
        own = torch.where(crop == organ + 1, crop, zero)
        ids = torch.tensor([o + 1 for o in kept], dtype=crop.dtype, device=crop.device)
        labels = torch.where(torch.isin(crop, ids), crop, zero) if others else own
        windows.append(
            Window(
                pad_to_multiple(image[region][None, None]),
                pad_to_multiple(own[None, None]),
                pad_to_multiple(labels[None, None]),
                start,
                size,
                kept,
            )
        )
    return windows


def _axial(volume: Volume) -> tuple[list[int], tuple[float, float, float]]:
    """Axes of the (z, y, x) voxels to flip so that z runs to the head, y to the back and x to
    the patient's left, and the spacing; refuses a stack that is not axial."""
    directions = volume.affine[:3, :3]
    axis_of = [int(np.argmax(np.abs(directions[:, j]))) for j in range(3)]
    if axis_of != [0, 1, 2]:
        raise OrientationError(f"not an axial stack (index axes along {axis_of})")
    flips = [dim for dim, j in ((0, 2), (1, 1), (2, 0)) if directions[j, j] < 0]
    return flips, volume.spacing


def _resample(x: Tensor, size: list[int], mode: str) -> Tensor:
    if mode == "nearest":
        return F.interpolate(x[None, None], size=size, mode="nearest-exact")[0, 0]
    return F.interpolate(x[None, None], size=size, mode="trilinear", align_corners=False)[0, 0]


def _pad_min(x: Tensor, shape: tuple[int, int, int]) -> Tensor:
    pads: list[int] = []
    for n, m in zip(reversed(x.shape), reversed(shape), strict=True):
        extra = max(0, m - n)
        pads += [extra // 2, extra - extra // 2]
    return F.pad(x, pads)


def prepare(
    volume: Volume,
    labels: npt.NDArray[np.uint8],
    device: torch.device | None = None,
    min_shape: tuple[int, int, int] = MIN_SHAPE,
) -> tuple[Tensor, Tensor]:
    """The windowed image (D, H, W) float32 in [0, 1] and its organ labels (uint8), resampled,
    cropped to the organs and padded, on ``device`` (the int16 voxels cross once)."""
    flips, spacing = _axial(volume)
    voxels = torch.from_numpy(np.ascontiguousarray(volume.voxels)).to(device)
    mask = torch.from_numpy(np.ascontiguousarray(labels)).to(device)
    if flips:
        voxels, mask = torch.flip(voxels, flips), torch.flip(mask, flips)
    size = [
        max(1, round(n * cur / tgt))
        for n, cur, tgt in zip(voxels.shape, spacing, SPACING_ZYX, strict=True)
    ]
    image = _resample(voxels.to(torch.float32), size, "trilinear")
    del voxels
    mask = _resample(mask.to(torch.float32), size, "nearest").to(torch.uint8)
    low, high = HU_WINDOW
    image = image.sub_(low).div_(high - low).clamp_(0.0, 1.0)
    hit = (mask > 0).nonzero()
    if hit.shape[0]:
        first = hit.min(0).values.tolist()
        last = hit.max(0).values.tolist()
        region = tuple(
            slice(max(0, a - m), min(n, b + m + 1))
            for a, b, m, n in zip(first, last, CROP_MARGIN, mask.shape, strict=True)
        )
        image, mask = image[region], mask[region]
    return _pad_min(image, min_shape), _pad_min(mask, min_shape)


def label_volume(masks: Mapping[str, npt.NDArray[np.bool_]]) -> npt.NDArray[np.uint8]:
    """One label volume (1 lung .. 4 aorta) from boolean organ masks named as ``ORGANS``."""
    shape = next(iter(masks.values())).shape
    out = np.zeros(shape, dtype=np.uint8)
    for i, organ in enumerate(ORGANS):
        if organ in masks:
            out[masks[organ]] = i + 1
    return out
