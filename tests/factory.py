"""Synthetic CT series made in code, so unit tests need no real data and no files in git.

``ct_series`` builds valid CT Image Storage datasets with real geometry; ``hu`` is either a
constant or a function of the voxel grid, so tests can place known structures (ellipsoid
lungs, spheres, cylinders) at known positions. ``index_series`` files such a series into a
spool and index as the SCP would, for tests of what comes after receiving.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
)

from node.index import Index
from scp.sink import ReceivedInstance
from scp.spool import Spool
from scp.validation import Identity

HUFunction = Callable[
    [npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]],
    npt.NDArray[np.float64],
]


def uid(*parts: object) -> UID:
    """A deterministic, valid UID under the 2.25 (UUID-derived) root."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")


def ct_series(
    n_slices: int = 24,
    rows: int = 64,
    columns: int = 64,
    *,
    pixel_spacing: float = 0.7,
    slice_spacing: float = 2.5,
    slice_thickness: float | None = None,
    hu: float | HUFunction = -1000.0,
    seed: str = "series",
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "TEST^PATIENT",
    patient_id: str = "TEST-0001",
    kernel: str = "STANDARD",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    origin: tuple[float, float, float] = (-22.4, -22.4, -30.0),
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    rescale_intercept: float = -1024.0,
) -> list[Dataset]:
    """An axial CT series, one dataset per slice, slice k at ``origin.z + k * slice_spacing``.

    ``hu(z, y, x)`` receives patient coordinates in mm (broadcast grids) and returns HU.
    """
    study = UID(study_uid) if study_uid else uid(seed, "study")
    series = UID(series_uid) if series_uid else uid(seed, "series")
    frame_of_reference = uid(seed, "for")
    row_dir = np.array(orientation[:3])
    col_dir = np.array(orientation[3:])
    normal = np.cross(row_dir, col_dir)
    ys, xs = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    datasets = []
    for k in range(n_slices):
        position = np.array(origin) + normal * slice_spacing * k
        px = position[0] + xs * pixel_spacing * row_dir[0] + ys * pixel_spacing * col_dir[0]
        py = position[1] + xs * pixel_spacing * row_dir[1] + ys * pixel_spacing * col_dir[1]
        pz = position[2] + xs * pixel_spacing * row_dir[2] + ys * pixel_spacing * col_dir[2]
        values = hu(pz, py, px) if callable(hu) else np.full((rows, columns), float(hu))
        stored = np.clip(np.round(values - rescale_intercept), 0, 4095).astype(np.uint16)
        datasets.append(
            _slice(
                k,
                stored,
                study=study,
                series=series,
                frame_of_reference=frame_of_reference,
                position=position,
                orientation=orientation,
                pixel_spacing=pixel_spacing,
                slice_thickness=slice_thickness or slice_spacing,
                seed=seed,
                patient_name=patient_name,
                patient_id=patient_id,
                kernel=kernel,
                image_type=image_type,
                rescale_intercept=rescale_intercept,
            )
        )
    return datasets


def _slice(
    k: int,
    stored: npt.NDArray[np.uint16],
    *,
    study: UID,
    series: UID,
    frame_of_reference: UID,
    position: npt.NDArray[np.float64],
    orientation: tuple[float, ...],
    pixel_spacing: float,
    slice_thickness: float,
    seed: str,
    patient_name: str,
    patient_id: str,
    kernel: str,
    image_type: Sequence[str],
    rescale_intercept: float,
) -> Dataset:
    sop_instance = uid(seed, "instance", k)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = "CT"
    ds.Manufacturer = "ctnode tests"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"synthetic {kernel}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = ""
    ds.SliceThickness = slice_thickness
    ds.KVP = 120
    ds.ConvolutionKernel = kernel
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = float(position[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = rescale_intercept
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = -600
    ds.WindowWidth = 1500
    ds.PixelData = stored.tobytes()
    return ds


def write_series(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write ``datasets`` as DICOM files named by index (never by a DICOM value)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def index_series(index: Index, spool: Spool, datasets: Sequence[Dataset]) -> str:
    """Put ``datasets`` in ``spool`` and ``index`` as the node's SCP would (without the
    network); the series UID."""
    for k, ds in enumerate(datasets):
        relative = Spool.relative_path(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, f"{k:064x}"
        )
        temp = spool.tmp_dir / "in.dcm"
        ds.save_as(temp, enforce_file_format=True)
        spool.place(temp, relative)
        identity = Identity(
            ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID
        )
        index.record(ReceivedInstance(identity, ds, relative, f"{k:064x}", 1, "1.2", "SCU"))
    return str(datasets[0].SeriesInstanceUID)
