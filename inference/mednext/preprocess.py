"""Volume and lung mask -> MedNeXt input, from the model card; one implementation, used by the
analyzer and by ``ctnode mednext train`` alike (a model sees at run time what it saw in
training).

1. The lungs' bounding box (the node's own segmentation, ``Segmented.lungs``) plus the card's
   ``lung_margin_mm`` on each side, cut on the volume's grid (less to resample).
2. HU clipped to the card's ``hu_window`` and scaled linearly to [-1, 1].
3. Trilinear resampling (align_corners False) to the card's ``spacing_mm``: n·current/target
   voxels per axis, rounded.
4. Centred in the card's ``input_size`` (multiples of 16, so the encoder's four halvings
   divide it), cropped or padded with -1 (the window's low end: air).

The volume is taken on its own (z, y, x) grid, slices ordered by position as the loader
orders them; axes are not reoriented.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from inference.mednext.card import Preprocessing


class NoLungs(ValueError):
    """The lung mask is empty: there is nothing to crop around."""

    reason = "no-lungs"


def lung_box(
    lungs: npt.NDArray[np.bool_], spacing: tuple[float, float, float], margin_mm: float
) -> tuple[slice, slice, slice]:
    """The lungs' bounding box on the volume's grid, widened by ``margin_mm``."""
    if not lungs.any():
        raise NoLungs("the lung mask is empty: no region to crop for MedNeXt")
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(lungs.any(axis=other))
        pad = math.ceil(margin_mm / spacing[axis])
        box.append(slice(max(0, hits[0] - pad), min(lungs.shape[axis], hits[-1] + 1 + pad)))
    return box[0], box[1], box[2]


def centre(x: Tensor, size: tuple[int, ...], fill: float) -> Tensor:
    """``x`` (..., D, H, W) cropped or padded symmetrically to ``size`` on its last axes."""
    nd = len(size)
    for i, want in enumerate(size):
        dim = x.ndim - nd + i
        n = x.shape[dim]
        if n > want:
            x = x.narrow(dim, (n - want) // 2, want)
        elif n < want:
            before = (want - n) // 2
            pad = [0, 0] * (x.ndim - dim - 1) + [before, want - n - before]
            x = F.pad(x, pad, value=fill)
    return x


def preprocess(
    voxels: npt.NDArray[np.int16] | npt.NDArray[np.float32],
    spacing: tuple[float, float, float],
    lungs: npt.NDArray[np.bool_],
    pre: Preprocessing,
    device: torch.device | None = None,
) -> Tensor:
    """The (1, *input_size) float32 model input of a (z, y, x) HU volume with its spacing
    (mm) and lung mask; add a batch axis to run it. On ``device``: the cut voxels cross to a
    GPU once and are resampled there."""
    box = lung_box(lungs, spacing, pre.lung_margin_mm)
    cut = torch.from_numpy(np.ascontiguousarray(voxels[box])).to(device, torch.float32)
    low, high = pre.hu_window
    cut = cut.clamp_(low, high).sub_(low).mul_(2.0 / (high - low)).sub_(1.0)
    size = [
        max(1, round(n * cur / tgt))
        for n, cur, tgt in zip(cut.shape, spacing, pre.spacing_mm, strict=True)
    ]
    resampled = F.interpolate(cut[None, None], size=size, mode="trilinear", align_corners=False)
    return centre(resampled[0], pre.input_size, -1.0).contiguous()
