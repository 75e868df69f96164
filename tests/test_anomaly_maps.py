"""Which slices the anomaly detector runs on and what its maps come to (no torch): every
k-th lung slice or the flagged ones, the percentile inside the lungs, the anomalous volume
standing for the skipped slices, and the centre of the largest region in patient space."""

from __future__ import annotations

import numpy as np
import pytest

from inference import codes
from inference.anomaly.maps import every_kth, flagged, lung_slices, summarise
from inference.volume import SliceRef, Volume


def _volume(n: int = 20, size: int = 16) -> Volume:
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    affine[:3, 3] = (-16.0, -16.0, 100.0)
    return Volume(
        voxels=np.zeros((n, size, size), dtype=np.int16),
        spacing=(5.0, 2.0, 2.0),
        affine=affine,
        study_uid="1.2",
        series_uid="1.2.3",
        frame_of_reference_uid="1.2.4",
        slices=tuple(SliceRef("1.2.840.10008.5.1.4.1.1.2", f"1.2.5.{i}") for i in range(n)),
    )


def _lungs(n: int = 20, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    left = np.zeros((n, size, size), dtype=np.bool_)
    right = np.zeros_like(left)
    right[4:16, 2:14, 1:7] = True  # image left = patient right
    left[4:16, 2:14, 9:15] = True
    return left, right


def test_every_kth_lung_slice_and_the_cap() -> None:
    left, right = _lungs()
    lungs = left | right
    assert lung_slices(lungs) == list(range(4, 16))
    assert every_kth(lungs, 4, 10) == [6, 10, 14]
    assert every_kth(lungs, 1, 3) == [4, 10, 15]
    assert every_kth(lungs, 50, 10) == [4]


def test_flagged_slices_are_the_most_covered() -> None:
    left, right = _lungs()
    lungs = left | right
    ground_glass = np.zeros_like(lungs)
    ground_glass[7, 3:6, 3:6] = True
    ground_glass[12, 3:10, 3:6] = True
    ground_glass[2, :, :] = True  # outside the lungs: not a flag
    assert flagged(lungs, {"ground_glass": ground_glass}, 1) == [12]
    assert flagged(lungs, {"ground_glass": ground_glass}, 5) == [7, 12]
    assert flagged(lungs, {}, 5) == [10]  # nothing flagged: the lungs' middle slice


def test_summary_of_the_maps() -> None:
    volume = _volume()
    left, right = _lungs()
    lungs = left | right
    slices = [6, 10, 14]
    maps = np.full((3, 16, 16), 0.05, dtype=np.float32)
    maps[0:2, 5:8, 10:13] = 0.8  # a region in the patient's left lung, on two slices
    maps[2, 3, 3] = 0.9  # a single voxel in the right lung
    maps[:, 0, 0] = 5.0  # outside the lungs: ignored
    summary = summarise(
        maps,
        slices,
        lungs,
        left,
        volume,
        percentile=99.0,
        threshold=0.2,
        map_threshold=0.3,
        slab=4.0,
    )
    inside = maps[lungs[slices]]
    assert summary.percentile == pytest.approx(float(np.percentile(inside, 99.0)))
    voxel_ml = 5.0 * 2.0 * 2.0 * 4.0 / 1000.0
    assert summary.volume_ml == pytest.approx(19 * voxel_ml)
    assert summary.largest_ml == pytest.approx(18 * voxel_ml)
    assert summary.laterality == codes.LEFT
    assert summary.key_slice in (6, 10)
    # centre voxel (x 11, y 6, z halfway between slices 6 and 10) in LPS
    assert summary.centre == pytest.approx((-16.0 + 2 * 11, -16.0 + 2 * 6, 100.0 + 5 * 8))
    diameter = 2 * (3 * 18 * voxel_ml * 1000 / (4 * np.pi)) ** (1 / 3)
    assert summary.diameter_mm == pytest.approx(diameter)
    assert summary.score == pytest.approx(summary.percentile / (summary.percentile + 0.2))
    assert summary.score > 0.5 and summary.slices == (6, 10, 14)


def test_a_quiet_map_has_no_region() -> None:
    left, right = _lungs()
    maps = np.full((2, 16, 16), 0.01, dtype=np.float32)
    summary = summarise(
        maps,
        [6, 10],
        left | right,
        left,
        _volume(),
        percentile=99.0,
        threshold=0.2,
        map_threshold=0.3,
        slab=1.0,
    )
    assert summary.centre is None and summary.key_slice is None
    assert summary.volume_ml == 0.0 and summary.score < 0.5
