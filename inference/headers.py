"""Per-slice header facts, read without pixel data: what validation, selection and loading
need to know about every slice (or every frame of an Enhanced/Legacy Converted CT)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from inference.errors import UNREADABLE, InvalidSeries

CT_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
}


@dataclass(frozen=True)
class SliceHeader:
    """One image plane: a single-frame instance, or one frame of a multi-frame instance."""

    path: Path
    frame: int | None
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    modality: str
    image_type: tuple[str, ...]
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int
    slice_thickness: float | None
    rescale_slope: float
    rescale_intercept: float
    padding_value: int | None
    transfer_syntax: str
    kernel: str
    series_description: str
    series_number: int | None
    contrast: bool

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type

    @property
    def is_original(self) -> bool:
        return not self.image_type or self.image_type[0] == "ORIGINAL"


def read_headers(path: Path) -> list[SliceHeader]:
    """The planes in one file, or ``InvalidSeries(unreadable)``."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as exc:
        raise InvalidSeries(UNREADABLE, f"cannot read a DICOM file: {type(exc).__name__}") from exc
    return headers_of(ds, path)


def headers_of(ds: Dataset, path: Path) -> list[SliceHeader]:
    """Planes of an already-read dataset (single frame, or each frame of a multi-frame)."""
    frames = int(ds.get("NumberOfFrames") or 1)
    shared = _first(ds.get("SharedFunctionalGroupsSequence"))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if frames == 1 and per_frame is None:
        return [_header(ds, path, None, ds, ds, ds, ds)]
    result = []
    for index in range(frames):
        groups = per_frame[index] if per_frame is not None and index < len(per_frame) else None

        def item(keyword: str, groups: Dataset | None = groups) -> Dataset | None:
            return _first(_get(groups, keyword)) or _first(_get(shared, keyword))

        result.append(
            _header(
                ds,
                path,
                index,
                item("PlanePositionSequence"),
                item("PlaneOrientationSequence"),
                item("PixelMeasuresSequence"),
                item("PixelValueTransformationSequence") or ds,
                frame_type=_frame_type(item("CTImageFrameTypeSequence")),
            )
        )
    return result


def _header(
    ds: Dataset,
    path: Path,
    frame: int | None,
    position: Dataset | None,
    orientation: Dataset | None,
    measures: Dataset | None,
    transform: Dataset,
    frame_type: tuple[str, ...] | None = None,
) -> SliceHeader:
    kernel = _text(ds.get("ConvolutionKernel"))
    if not kernel:
        kernel = _text(_get(_first(ds.get("SharedFunctionalGroupsSequence")), "ConvolutionKernel"))
    return SliceHeader(
        path=path,
        frame=frame,
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        modality=str(ds.get("Modality", "")),
        image_type=frame_type or tuple(str(v).upper() for v in _values(ds.get("ImageType"))),
        position=_floats(_get(position, "ImagePositionPatient"), 3),  # type: ignore[arg-type]
        orientation=_floats(_get(orientation, "ImageOrientationPatient"), 6),  # type: ignore[arg-type]
        pixel_spacing=_floats(_get(measures, "PixelSpacing"), 2),  # type: ignore[arg-type]
        rows=int(ds.get("Rows") or 0),
        columns=int(ds.get("Columns") or 0),
        slice_thickness=_float(_get(measures, "SliceThickness")),
        rescale_slope=_float(transform.get("RescaleSlope")) or 1.0,
        rescale_intercept=_float(transform.get("RescaleIntercept")) or 0.0,
        padding_value=_int(ds.get("PixelPaddingValue")),
        transfer_syntax=str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")),
        kernel=kernel,
        series_description=_text(ds.get("SeriesDescription")),
        series_number=_int(ds.get("SeriesNumber")),
        contrast=bool(_text(ds.get("ContrastBolusAgent"))),
    )


def _frame_type(item: Dataset | None) -> tuple[str, ...] | None:
    value = _get(item, "FrameType")
    return tuple(str(v).upper() for v in _values(value)) if value else None


def _first(sequence: Any) -> Dataset | None:
    try:
        return sequence[0] if sequence else None
    except (TypeError, IndexError):
        return None


def _get(ds: Dataset | None, keyword: str) -> Any:
    return None if ds is None else ds.get(keyword)


def _values(value: Any) -> Sequence[Any]:
    if value is None:
        return ()
    if isinstance(value, str | bytes):
        return (value,)
    try:
        return list(value)
    except TypeError:
        return (value,)


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    values = _values(value)
    try:
        result = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return result if len(result) == count else None


def _float(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    return "\\".join(str(v) for v in _values(value)).strip()
