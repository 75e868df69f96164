"""From files to a checked Volume: ordering, HU, geometry, every rejection reason, decoders,
multi-frame objects, and the real CTs."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from highdicom.legacy import LegacyConvertedEnhancedCTImage
from pydicom.dataset import Dataset

from config import ValidationSettings
from inference import errors
from inference.chest import check_chest, coverage
from inference.errors import InvalidSeries
from inference.headers import read_headers
from inference.loading import _decode_into, load_ordered, load_series
from inference.validation import OrderedSeries
from inference.volume import Volume
from tests.conftest import testdata
from tests.factory import ct_series, write_series


def load(datasets: list[Dataset], folder: Path, **rules: Any) -> Volume:
    paths = write_series(datasets, folder)
    random.Random(1).shuffle(paths)
    return load_series(paths, rules=ValidationSettings(**rules))


def reason(datasets: list[Dataset], folder: Path, **rules: Any) -> InvalidSeries:
    with pytest.raises(InvalidSeries) as caught:
        load(datasets, folder, **rules)
    return caught.value


def test_slices_ordered_by_position_not_instance_number(tmp_path: Path) -> None:
    series = ct_series(24, 16, 16, hu=lambda z, y, x: z * 10 + 0 * x + 0 * y, slice_spacing=2.0)
    for k, ds in enumerate(series):
        ds.InstanceNumber = 100 - k  # misleading on purpose
    volume = load(series, tmp_path)
    assert volume.voxels.dtype == np.int16
    column = volume.voxels[:, 8, 8].astype(float)
    assert np.all(np.diff(column) > 0)
    assert volume.spacing == pytest.approx((2.0, 0.7, 0.7))
    assert [s.sop_instance_uid for s in volume.slices] == [str(ds.SOPInstanceUID) for ds in series]
    # the affine maps voxel indices to the slice positions
    for k in (0, 23):
        assert volume.to_patient(k, 0, 0) == pytest.approx(series[k].ImagePositionPatient)
    assert volume.to_patient(0, 3, 5) == pytest.approx(
        np.array(series[0].ImagePositionPatient) + np.array([5 * 0.7, 3 * 0.7, 0])
    )


def test_hu_exact_padding_to_air_and_float_when_needed(tmp_path: Path) -> None:
    series = ct_series(20, 8, 8, hu=-50.0)
    series[0].PixelPaddingValue = 0
    series[0].PixelData = np.zeros((8, 8), np.uint16).tobytes()
    volume = load(series, tmp_path / "a")
    assert volume.voxels[1:].min() == volume.voxels[1:].max() == -50
    assert volume.voxels[0].max() == -1024
    halves = ct_series(20, 8, 8, hu=-50.0, seed="slope")
    for ds in halves:
        ds.RescaleSlope = 0.5
    volume = load(halves, tmp_path / "b")
    assert volume.voxels.dtype == np.float32
    assert float(volume.voxels[0, 0, 0]) == pytest.approx((974 * 0.5) - 1024)


def _mutate(change: Callable[[list[Dataset]], list[Dataset]]) -> list[Dataset]:
    return change(ct_series(24, 16, 16, seed="bad"))


def _every(**values: object) -> Callable[[list[Dataset]], list[Dataset]]:
    def change(datasets: list[Dataset]) -> list[Dataset]:
        for index in range(len(datasets)):
            _set(datasets, index, **values)
        return datasets

    return change


def _without_position(datasets: list[Dataset]) -> list[Dataset]:
    del datasets[5].ImagePositionPatient
    return datasets


def _set(datasets: list[Dataset], index: int, **values: object) -> list[Dataset]:
    for key, value in values.items():
        setattr(datasets[index], key, value)
    return datasets


def _tilted(datasets: list[Dataset]) -> list[Dataset]:
    for k, ds in enumerate(datasets):
        x, y, z = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y + k * 0.5, z]  # table moves, gantry tilted ~11 degrees
    return datasets


def _sagittal(datasets: list[Dataset]) -> list[Dataset]:
    for k, ds in enumerate(datasets):
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [k * 2.5, 0, 0]
    return datasets


def _gap(datasets: list[Dataset]) -> list[Dataset]:
    for ds in datasets[12:]:
        x, y, z = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, z + 10]
    return datasets


def _duplicate_conflicting(datasets: list[Dataset]) -> list[Dataset]:
    extra = ct_series(
        1,
        16,
        16,
        seed="other-pixels",
        hu=50.0,
        series_uid=str(datasets[0].SeriesInstanceUID),
        study_uid=str(datasets[0].StudyInstanceUID),
    )[0]
    extra.ImagePositionPatient = datasets[3].ImagePositionPatient
    return [*datasets, extra]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (_every(Modality="MR"), errors.NOT_CT),
        (_every(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]), errors.LOCALIZER_ONLY),
        (_every(ImageType=["DERIVED", "SECONDARY", "AXIAL"]), errors.NOT_ORIGINAL),
        (lambda d: d[:19], errors.TOO_FEW_SLICES),
        (lambda d: _set(d, 5, PixelSpacing=[0.8, 0.8]), errors.INCONSISTENT_GEOMETRY),
        (
            lambda d: _set(d, 5, ImageOrientationPatient=[1, 0, 0, 0, 0.98, 0.199]),
            errors.INCONSISTENT_GEOMETRY,
        ),
        (_without_position, errors.MISSING_POSITION),
        (_duplicate_conflicting, errors.DUPLICATE_POSITION),
        (_gap, errors.GAP),
        (_tilted, errors.GANTRY_TILT),
        (_sagittal, errors.NON_AXIAL),
    ],
)
def test_rejection_reasons(
    tmp_path: Path, change: Callable[[list[Dataset]], list[Dataset]], code: str
) -> None:
    error = reason(_mutate(change), tmp_path)
    assert error.code == code and error.message


def test_gap_says_where_and_tilt_gives_angle(tmp_path: Path) -> None:
    gap = reason(_mutate(_gap), tmp_path / "gap")
    assert gap.details["where"] == [11] and "between slices 11 and 12" in gap.message
    tilt = reason(_mutate(_tilted), tmp_path / "tilt")
    assert tilt.details["angle_degrees"] == pytest.approx(11.3, abs=0.2)


def test_rows_differ_is_inconsistent(tmp_path: Path) -> None:
    series = ct_series(24, 16, 16, seed="rows")
    other = ct_series(24, 16, 12, seed="rows")[5]
    series[5] = other
    assert reason(series, tmp_path).code == errors.INCONSISTENT_GEOMETRY


def test_identical_duplicates_are_dropped_with_a_note(tmp_path: Path) -> None:
    series = ct_series(24, 16, 16, seed="dups")
    copy = pydicom.Dataset(series[7])
    copy.file_meta = series[7].file_meta
    copy.SOPInstanceUID = "1.2.3.4.5.6"
    volume = load([*series, copy], tmp_path)
    assert volume.shape[0] == 24 and "1 identical duplicate images dropped" in volume.notes


def test_truncated_pixel_data(tmp_path: Path) -> None:
    series = ct_series(24, 16, 16, seed="trunc")
    series[4].PixelData = series[4].PixelData[:100]
    assert reason(series, tmp_path).code == errors.TRUNCATED_PIXEL_DATA


def test_minimum_slices_is_configurable(tmp_path: Path) -> None:
    assert load(ct_series(10, 8, 8, seed="ten"), tmp_path, min_slices=10).shape[0] == 10


# -- decoders --------------------------------------------------------------------------


LOSSLESS = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
)


def test_lossless_transfer_syntaxes_decode_to_identical_hu() -> None:
    folder = testdata("ct-slice-transfer-syntaxes")
    decoded = {}
    for path in sorted(folder.glob("CTImage.dcm*")):
        (header,) = read_headers(path)
        plane = np.empty((1, header.rows, header.columns), np.int16)
        if header.transfer_syntax in ("1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55"):
            continue
        _decode_into(plane, path, [(0, header)])
        decoded[header.transfer_syntax] = plane[0]
    assert set(LOSSLESS) <= set(decoded)
    reference = decoded["1.2.840.10008.1.2.1"]
    for syntax in LOSSLESS:
        assert np.array_equal(decoded[syntax], reference), syntax
    for syntax in set(decoded) - set(LOSSLESS):  # lossy: close, not equal
        assert np.abs(decoded[syntax].astype(int) - reference).mean() < 50, syntax


@pytest.mark.parametrize("syntax", ["53", "55"])
def test_retired_jpeg_is_unsupported_not_a_crash(tmp_path: Path, syntax: str) -> None:
    path = next(testdata("ct-slice-transfer-syntaxes").glob(f"*1.2.840.10008.1.2.4.{syntax}.dcm"))
    ordered = OrderedSeries(tuple(read_headers(path)), (0.0,), 1.0, (0.0, 0.0, 1.0), ())
    with pytest.raises(InvalidSeries) as caught:
        load_ordered(ordered)
    assert caught.value.code == errors.UNSUPPORTED_TRANSFER_SYNTAX


@pytest.fixture(scope="module")
def lung_ct() -> Volume:
    return load_series(sorted(testdata("chest-ct-100-lung").glob("*.dcm")))


def test_legacy_converted_enhanced_ct_loads_like_the_single_frames(
    tmp_path: Path, lung_ct: Volume
) -> None:
    sources = [pydicom.dcmread(p) for p in sorted(testdata("chest-ct-100-lung").glob("*.dcm"))]
    enhanced = LegacyConvertedEnhancedCTImage(
        legacy_datasets=sources,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=99,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path)
    del sources, enhanced
    volume = load_series([path])
    assert volume.shape == lung_ct.shape
    assert np.array_equal(volume.voxels, lung_ct.voxels)
    assert np.allclose(volume.affine, lung_ct.affine, atol=1e-4)
    assert [s.frame_number for s in volume.slices[:3]] != [None] * 3


def test_real_chest_cts_load_and_cover_the_chest(lung_ct: Volume) -> None:
    assert lung_ct.shape == (100, 512, 512)
    assert lung_ct.spacing == pytest.approx((2.5, 0.898438, 0.898438))
    assert check_chest(lung_ct).lung_extent_mm > 150
    pneumonia = load_series(sorted(testdata("chest-ct-248-pneumonia-jpegll").glob("*.dcm")))
    assert pneumonia.shape == (248, 512, 512) and pneumonia.voxels.dtype == np.int16
    assert pneumonia.spacing[0] == pytest.approx(1.25)
    assert check_chest(pneumonia).lung_extent_mm > 150


def test_ge_head_ct_gets_a_clear_reason() -> None:
    with pytest.raises(InvalidSeries) as caught:
        load_series(sorted(p for p in testdata("dcm_qa_ct/In/GE").iterdir() if p.is_file()))
    assert caught.value.code == errors.GANTRY_TILT
    assert "degrees" in caught.value.message


def test_head_like_volume_is_not_chest(tmp_path: Path) -> None:
    def head(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        inside = (x / 80) ** 2 + (y / 95) ** 2 < 1
        skull = inside & ((x / 74) ** 2 + (y / 89) ** 2 > 1)
        sinus = ((x - 10) ** 2 + (y + 70) ** 2) < 15**2  # a small air cell
        return np.where(skull, 1200.0, np.where(sinus, -900.0, np.where(inside, 35.0, -1000.0)))

    series = ct_series(40, 128, 128, pixel_spacing=1.6, hu=head, origin=(-102, -102, 0))
    volume = load(series, tmp_path)
    assert coverage(volume).lung_extent_mm == 0
    with pytest.raises(InvalidSeries) as caught:
        check_chest(volume)
    assert caught.value.code == errors.NOT_CHEST


def test_ge_head_ct_is_not_chest_even_when_tilt_is_allowed() -> None:
    permissive = ValidationSettings(max_tilt_degrees=90, max_obliquity_degrees=90, gap_factor=100)
    head = load_series(
        sorted(p for p in testdata("dcm_qa_ct/In/GE").iterdir() if p.is_file()), rules=permissive
    )
    with pytest.raises(InvalidSeries) as caught:
        check_chest(head)
    assert caught.value.code == errors.NOT_CHEST
