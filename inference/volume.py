"""A CT series as a 3D volume in Hounsfield units, with its patient-space geometry.

This is the contract between loading (``inference.loading``) and every analyzer: analyzers
see voxels and geometry, never DICOM files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class SliceRef:
    """The source image behind one z index, so reports can reference what they measured."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None


@dataclass(frozen=True, eq=False)
class Volume:
    """Voxels ``(z, y, x)`` in HU and the geometry that places them in the patient.

    ``z`` runs along the slice normal in ascending position (for an axial series from
    feet to head), ``y`` along the image columns direction (rows of the image), ``x``
    along the image rows direction. ``affine`` maps homogeneous voxel indices
    ``(x, y, z, 1)`` (note the order, as in ITK/NIfTI) to patient coordinates in mm
    (DICOM LPS). ``spacing`` is ``(z, y, x)`` in mm, the z spacing measured from positions.
    """

    voxels: npt.NDArray[np.int16] | npt.NDArray[np.float32]
    spacing: tuple[float, float, float]
    affine: npt.NDArray[np.float64]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    slices: tuple[SliceRef, ...]
    kernel: str = ""
    series_description: str = ""
    slice_thickness: float | None = None
    contrast: bool | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.voxels.ndim != 3:
            raise ValueError(f"a volume is 3D (z, y, x); got {self.voxels.ndim} dimensions")
        if len(self.slices) != self.voxels.shape[0]:
            raise ValueError(
                f"{len(self.slices)} slice references for {self.voxels.shape[0]} slices"
            )
        if self.affine.shape != (4, 4):
            raise ValueError("affine must be 4x4")
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.voxels.shape
        return int(z), int(y), int(x)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (cm^3)."""
        return float(np.prod(self.spacing)) / 1000.0

    def to_patient(self, z: float, y: float, x: float) -> tuple[float, float, float]:
        """Patient (LPS, mm) coordinates of a voxel position given as ``(z, y, x)``."""
        p = self.affine @ np.array([x, y, z, 1.0])
        return float(p[0]), float(p[1]), float(p[2])
