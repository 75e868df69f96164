"""Preprocessing to the CT-CLIP input: scale, resample, crop/pad and the documented orientation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch (the 'neural' extra) is not installed")

from inference.ctclip.preprocess import OrientationError, preprocess
from inference.volume import SliceRef, Volume


def _volume(flip_x: bool = False) -> tuple[Volume, tuple[float, float, float]]:
    """200x(300, 320) axial volume, 0.9 mm pixels, 2 mm slices; a marker left-posterior-superior."""
    nz, ny, nx = 100, 300, 320
    vox = np.full((nz, ny, nx), -1000, np.int16)
    # marker in patient LPS mm at (L=+60, P=+40, S=+50); origin at the volume's corner
    origin = np.array([-144.0, -135.0, -100.0])
    sp = (2.0, 0.9, 0.9)
    marker = np.array([60.0, 40.0, 50.0])
    iz = round((marker[2] - origin[2]) / sp[0])
    iy = round((marker[1] - origin[1]) / sp[1])
    ix = round((marker[0] - origin[0]) / sp[2])
    vox[iz - 3 : iz + 4, iy - 6 : iy + 7, ix - 6 : ix + 7] = 1500
    affine = np.eye(4)
    affine[:3, :3] = np.diag([sp[2], sp[1], sp[0]])
    affine[:3, 3] = origin
    if flip_x:
        vox = vox[:, :, ::-1].copy()
        affine[0, 0] = -sp[2]
        affine[0, 3] = origin[0] + (nx - 1) * sp[2]
    slices = tuple(SliceRef("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{k}") for k in range(nz))
    vol = Volume(vox, sp, affine, "1.2", "1.2.1", "1.2.2", slices)
    return vol, (float(marker[0]), float(marker[1]), float(marker[2]))


def _expected_index(volume: Volume, marker: tuple[float, float, float]) -> np.ndarray:
    """Where the marker lands: continuous resampled index plus the centre crop/pad offset."""
    nz, ny, nx = volume.shape
    origin = volume.affine[:3, 3]
    lo = np.array([origin[2], origin[0], origin[1]])  # S, L, P of voxel 0 (unflipped)
    n = np.array([nz, nx, ny])
    sp = np.array([volume.spacing[0], volume.spacing[2], volume.spacing[1]])
    target_sp = np.array([1.5, 0.75, 0.75])
    size = np.floor(n * sp / target_sp)
    pos = np.array([marker[2], marker[0], marker[1]])
    idx_in = (pos - lo) / sp
    idx_out = (idx_in + 0.5) * size / n - 0.5
    target = np.array([240, 480, 480])
    offset = np.where(size > target, -((size - target) // 2), (target - size) // 2)
    return np.asarray(idx_out + offset, dtype=np.float64)


def test_marker_lands_superior_left_posterior() -> None:
    vol, marker = _volume()
    out = preprocess(vol)
    assert tuple(out.shape) == (1, 240, 480, 480)
    assert float(out.min()) == -1.0 and float(out.max()) == pytest.approx(1.0)
    hot = np.argwhere(out[0].numpy() > 0.5).mean(axis=0)
    expected = _expected_index(vol, marker)
    assert np.allclose(hot, expected, atol=1.5), (hot, expected)
    # superior, left and posterior of the centre on every axis
    assert (hot > np.array([120, 240, 240])).all()


def test_flipped_columns_give_the_same_input() -> None:
    vol, _ = _volume()
    flipped, _ = _volume(flip_x=True)
    assert np.array_equal(preprocess(vol).numpy(), preprocess(flipped).numpy())


def test_padding_is_minus_one_and_scale_is_hu_over_1000() -> None:
    vol, _ = _volume()
    out = preprocess(vol)[0]
    assert float(out[0, 0, 0]) == -1.0  # 100 slices x 2 mm -> 133 slices, padded
    assert float(out[120, 240, 100]) == pytest.approx(-1.0)


def test_non_axial_stack_is_rejected() -> None:
    vol, _ = _volume()
    affine = vol.affine.copy()
    affine[:3, :3] = affine[:3, [0, 2, 1]]
    sagittal = Volume(vol.voxels, vol.spacing, affine, "1", "2", "3", vol.slices)
    with pytest.raises(OrientationError):
        preprocess(sagittal)
