"""Series files -> ``Volume``.

A first, minimal loader (single-frame axial series, every pixel decoder pydicom has): slices
sorted by position along the slice normal, rescale applied, z spacing measured from
positions. Validation, multi-frame objects and parallel decoding build on this.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from inference.volume import SliceRef, Volume


def load_series(paths: Sequence[str | Path]) -> Volume:
    """Load the single-frame slices in ``paths`` (one series) as a Volume in HU."""
    datasets = [pydicom.dcmread(p) for p in paths]
    if not datasets:
        raise ValueError("no files")
    orientation = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    datasets.sort(key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    distances = positions @ normal
    z_spacing = float(np.median(np.diff(distances))) if len(datasets) > 1 else 1.0
    voxels = np.empty((len(datasets), datasets[0].Rows, datasets[0].Columns), dtype=np.int16)
    for k, ds in enumerate(datasets):
        hu = ds.pixel_array * float(getattr(ds, "RescaleSlope", 1)) + float(
            getattr(ds, "RescaleIntercept", 0)
        )
        voxels[k] = np.clip(np.round(hu), -1024, 32767).astype(np.int16)
    dy, dx = (float(v) for v in datasets[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * dx
    affine[:3, 1] = col_dir * dy
    affine[:3, 2] = normal * z_spacing
    affine[:3, 3] = positions[0]
    first = datasets[0]
    return Volume(
        voxels=voxels,
        spacing=(z_spacing, dy, dx),
        affine=affine,
        study_uid=str(first.StudyInstanceUID),
        series_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "")),
        slices=tuple(SliceRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets),
        kernel=str(getattr(first, "ConvolutionKernel", "") or ""),
        series_description=str(getattr(first, "SeriesDescription", "") or ""),
        slice_thickness=float(first.SliceThickness) if "SliceThickness" in first else None,
    )
