"""Volume -> CT-CLIP model input (1, 240, 480, 480), as CT-CLIP.md "Preprocessing" documents.

HU clipped to [-1000, 1000], trilinear resample (align_corners False) to 1.5 mm between slices and
0.75 mm in-plane (size floor(n * current / target)), divided by 1000, centre-cropped or padded
symmetrically with -1. Orientation (CT-CLIP issue #41): axis 0 inferior -> superior, axis 1 towards
the patient's left, axis 2 towards posterior; our (z, y, x) axial volume becomes (z, x, y).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from inference.volume import Volume

TARGET_SPACING = (1.5, 0.75, 0.75)
TARGET_SHAPE = (240, 480, 480)
HU_RANGE = (-1000.0, 1000.0)


class OrientationError(ValueError):
    """The volume is not an axial stack the model can be fed; ``reason`` is a short code."""

    reason = "not-axial"


def _canonical(
    volume: Volume, device: torch.device | None
) -> tuple[Tensor, tuple[float, float, float]]:
    """Voxels as float (S, L, P) axes (superior, left, posterior ascending) and their spacing."""
    directions = volume.affine[:3, :3]
    # column j of the affine is the patient direction of index axis j (x, y, z)
    axis_of = [int(np.argmax(np.abs(directions[:, j]))) for j in range(3)]
    if sorted(axis_of) != [0, 1, 2] or axis_of[2] != 2:
        raise OrientationError(f"slice normal is not along the body axis: {axis_of}")
    voxels = torch.from_numpy(np.ascontiguousarray(volume.voxels)).to(device)
    voxels = voxels.to(torch.float32)
    spacing_zyx = volume.spacing
    flips = [dim for dim, j in ((0, 2), (1, 1), (2, 0)) if directions[axis_of[j], j] < 0]
    if flips:
        voxels = torch.flip(voxels, flips)
    # now (z, y, x) with z -> +S and each of y, x -> +L or +P
    if axis_of[0] == 0:  # x runs L, y runs P: (z, x, y)
        return voxels.permute(0, 2, 1), (spacing_zyx[0], spacing_zyx[2], spacing_zyx[1])
    return voxels, spacing_zyx


def _crop_or_pad(x: Tensor, target: tuple[int, ...], fill: float) -> Tensor:
    for dim, size in enumerate(target):
        n = x.shape[dim]
        if n > size:
            start = (n - size) // 2
            x = x.narrow(dim, start, size)
        elif n < size:
            before = (size - n) // 2
            pad = [0, 0] * x.ndim
            index = 2 * (x.ndim - 1 - dim)
            pad[index], pad[index + 1] = before, size - n - before
            x = F.pad(x, pad, value=fill)
    return x


def preprocess(
    volume: Volume, shape: tuple[int, int, int] = TARGET_SHAPE, device: torch.device | None = None
) -> Tensor:
    """The model input (1, *shape) float32 in [-1, 1], by default (1, 240, 480, 480); add a
    batch axis to run it. A model of other hyperparameters takes its own ``shape``
    (``CTCLIPConfig.input_shape``) at the same spacing. On ``device`` (the model's): the
    int16 voxels cross to a GPU once and are resampled there."""
    voxels, spacing = _canonical(volume, device)
    voxels = voxels.clamp_(*HU_RANGE)
    size = [
        int(np.floor(n * cur / tgt))
        for n, cur, tgt in zip(voxels.shape, spacing, TARGET_SPACING, strict=True)
    ]
    resampled = F.interpolate(voxels[None, None], size=size, mode="trilinear", align_corners=False)[
        0, 0
    ]
    del voxels
    resampled = resampled.div_(1000.0)
    return _crop_or_pad(resampled, shape, -1.0)[None].contiguous()
