"""Lung densitometry: volumes, density and the fractions of lung in the HU ranges that
radiologists score, per lung, in total, and per third of lung height.

Ranges and their sources:

- LAA%-950, the emphysema index: fraction of lung below -950 HU (Gevenois et al., AJRCCM
  1996;154:187-192, validated against histology on thin-section CT).
- Perc15: the 15th percentile of the lung density histogram (Dirksen et al., AJRCCM
  1999;160:1498; Parr et al., AJRCCM 2004;170:883).
- HAA%: high-attenuation areas, -600 to -250 HU (Podolanczuk et al., Thorax 2016;71:1082,
  MESA Lung).
- Ground-glass range -700 to -300 HU ("poorly aerated") and consolidation range -300 to +50 HU
  ("non-aerated"), as in COVID-19 quantification (Colombi et al., Radiology 2020;296:E86);
  percentage of opacity = both ranges over lung volume (Chaganti et al., Radiol Artif Intell
  2020;2:e200048).

Sharp (lung) kernels add noise that pushes normal parenchyma below -950 HU and inflates
LAA% (about 10 % on the 100-slice LUNG-kernel test CT). As densitometry software does, the
image is smoothed before measuring when the kernel is sharp: a Gaussian of 1.0 mm in-plane
and 0.5 mm through-plane (cf. Schilham et al., Med Image Anal 2006;10:451, noise filtering
for emphysema scoring; Gallardo-Estrella et al., Eur Radiol 2016;26:2880, kernel
normalisation). The kernel class and whether smoothing ran are reported.

The opacity ranges (ground glass, consolidation, percentage of opacity) leave out what is
not airspace disease but falls in the same HU ranges (:func:`excluded`):

- Vessels: a vessel is a bright structure thinner than the surrounding parenchyma, so a
  grey-level opening with a box of at most 8 mm (the largest odd number of voxels that
  fits; the lung outside the envelope set to soft tissue,
  50 HU, so that the pleura does not count as thin) removes it, and the white top-hat
  (value minus opening) is large there: voxels denser than -600 HU standing out by more than
  250 HU are vessel cores (cf. the morphological vessel removal of Sluimer et al., IEEE TMI
  2006;25:385, and the top-hat vessel enhancement used before texture analysis of GGO). A
  ground-glass or consolidated region wider than the box keeps its value in the opening
  and stays. The cores' 6-neighbours denser than -800 HU are their partial-volume walls and
  go with them.
- The envelope's outermost voxel layer in-plane: partial volume with the chest wall,
  mediastinum and diaphragm.

On the normal 100-slice test CT these took the ground-glass range from 524 mL to 132 mL
and the percentage of opacity from 13.3 % to 3.2 % (the pneumonia CT: 605 to 244 mL, 26.0 %
to 9.4 %); the volumes and mean density,
LAA% and Perc15 are measured on the whole lung as the literature defines them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from inference.findings import Measurement
from inference.quant.segmentation import LungMasks
from inference.volume import Volume

LAA_HU = -950
HAA_RANGE = (-600, -250)
GGO_RANGE = (-700, -300)
CONSOLIDATION_RANGE = (-300, 50)
SMOOTH_MM = (0.5, 1.0, 1.0)
VESSEL_BOX_MM = 8.0
VESSEL_TOPHAT_HU = 250.0
VESSEL_CORE_HU = -600.0
VESSEL_WALL_HU = -800.0
OUTSIDE_HU = 50.0

UNIT_ML = "mL"
UNIT_PERCENT = "%"
UNIT_HU = "[hnsf'U]"


@dataclass(frozen=True)
class RegionDensity:
    region: str
    volume_ml: float
    mean_hu: float
    laa950_percent: float
    perc15_hu: float
    haa_percent: float
    ggo_ml: float
    ggo_percent: float
    consolidation_ml: float
    consolidation_percent: float
    vessel_ml: float = 0.0

    @property
    def opacity_percent(self) -> float:
        return self.ggo_percent + self.consolidation_percent

    def measurements(self) -> tuple[Measurement, ...]:
        r = self.region
        return (
            Measurement("Lung volume", round(self.volume_ml, 1), UNIT_ML, region=r),
            Measurement("Mean lung density", round(self.mean_hu, 1), UNIT_HU, region=r),
            Measurement("LAA%-950", round(self.laa950_percent, 2), UNIT_PERCENT, region=r),
            Measurement("Perc15", round(self.perc15_hu, 1), UNIT_HU, region=r),
            Measurement(
                "HAA% (-600 to -250 HU)", round(self.haa_percent, 2), UNIT_PERCENT, region=r
            ),
            Measurement("Ground-glass range volume", round(self.ggo_ml, 1), UNIT_ML, region=r),
            Measurement("Ground-glass range", round(self.ggo_percent, 2), UNIT_PERCENT, region=r),
            Measurement(
                "Consolidation range volume", round(self.consolidation_ml, 1), UNIT_ML, region=r
            ),
            Measurement(
                "Consolidation range", round(self.consolidation_percent, 2), UNIT_PERCENT, region=r
            ),
            Measurement(
                "Percentage of opacity", round(self.opacity_percent, 2), UNIT_PERCENT, region=r
            ),
            Measurement("Vessel volume", round(self.vessel_ml, 1), UNIT_ML, region=r),
        )


@dataclass(frozen=True)
class Densitometry:
    regions: dict[str, RegionDensity]
    smoothed: bool
    values: npt.NDArray[np.float32]  # the (possibly smoothed) HU the numbers come from
    excluded: npt.NDArray[np.bool_]  # vessels and the envelope's rim: not in the opacity ranges
    vessels: npt.NDArray[np.bool_]

    @property
    def total(self) -> RegionDensity:
        return self.regions["both lungs"]


def values_for(volume: Volume, *, sharp_kernel: bool) -> npt.NDArray[np.float32]:
    """The HU values densitometry measures: the voxels, noise-filtered for a sharp kernel."""
    values = volume.voxels.astype(np.float32)
    if sharp_kernel:
        sigma = [mm / s for mm, s in zip(SMOOTH_MM, volume.spacing, strict=True)]
        values = ndimage.gaussian_filter(values, sigma=sigma, truncate=3.0)
    return values


def measure(
    volume: Volume,
    masks: LungMasks,
    *,
    sharp_kernel: bool,
    values: npt.NDArray[np.float32] | None = None,
) -> Densitometry:
    if values is None:
        values = values_for(volume, sharp_kernel=sharp_kernel)
    vessels, rim = excluded(values, masks.lungs, volume.spacing)
    countable = ~(vessels | rim)
    regions: dict[str, npt.NDArray[np.bool_]] = {
        "both lungs": masks.lungs,
        "left lung": masks.left,
        "right lung": masks.right,
    }
    regions |= _thirds(masks.lungs)
    measured = {
        name: _region(name, values[mask], countable[mask], vessels[mask], volume.voxel_volume_ml)
        for name, mask in regions.items()
    }
    return Densitometry(measured, sharp_kernel, values, vessels | rim, vessels)


def excluded(
    values: npt.NDArray[np.float32],
    lungs: npt.NDArray[np.bool_],
    spacing: tuple[float, float, float],
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(vessels, rim) inside ``lungs``: what the opacity ranges leave out (module docstring)."""
    vessels = np.zeros_like(lungs)
    rim = np.zeros_like(lungs)
    if not lungs.any():
        return vessels, rim
    box = tuple(slice(max(0, int(i.min()) - 1), int(i.max()) + 2) for i in np.nonzero(lungs))
    inside = lungs[box]
    hu = np.where(inside, values[box], np.float32(OUTSIDE_HU))
    # the largest odd box within VESSEL_BOX_MM: what is wider survives the opening
    size = tuple(max(1, int(VESSEL_BOX_MM / s) - (1 - int(VESSEL_BOX_MM / s) % 2)) for s in spacing)
    tophat = hu - ndimage.grey_opening(hu, size=size)
    core = inside & (tophat > VESSEL_TOPHAT_HU) & (hu > VESSEL_CORE_HU)
    wall = ndimage.binary_dilation(core, structure=ndimage.generate_binary_structure(3, 1))
    vessels[box] = (core | (wall & (hu > VESSEL_WALL_HU))) & inside
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    rim[box] = inside & ~ndimage.binary_erosion(inside, structure=in_plane)
    return vessels, rim


def _thirds(lungs: npt.NDArray[np.bool_]) -> dict[str, npt.NDArray[np.bool_]]:
    """Upper, middle and lower thirds of the lungs' craniocaudal extent (z grows upwards)."""
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    if zs.size == 0:
        return {}
    bounds = np.linspace(zs.min(), zs.max() + 1, 4)
    result = {}
    for name, (low, high) in zip(
        ("lower third", "middle third", "upper third"),
        itertools.pairwise(bounds),
        strict=True,
    ):
        part = np.zeros_like(lungs)
        part[round(low) : round(high)] = lungs[round(low) : round(high)]
        result[name] = part
    return result


def empty_region(name: str) -> RegionDensity:
    """A region without voxels: zero volume, no density (NaN)."""
    return RegionDensity(name, 0.0, float("nan"), 0.0, float("nan"), 0.0, 0.0, 0.0, 0.0, 0.0)


def _region(
    name: str,
    hu: npt.NDArray[np.float32],
    countable: npt.NDArray[np.bool_],
    vessels: npt.NDArray[np.bool_],
    voxel_ml: float,
) -> RegionDensity:
    n = hu.size
    if n == 0:
        return empty_region(name)

    def percent(count: int) -> float:
        return 100.0 * count / n

    ggo = int(np.count_nonzero(countable & (hu >= GGO_RANGE[0]) & (hu < GGO_RANGE[1])))
    consolidation = int(
        np.count_nonzero(
            countable & (hu >= CONSOLIDATION_RANGE[0]) & (hu <= CONSOLIDATION_RANGE[1])
        )
    )
    return RegionDensity(
        region=name,
        volume_ml=n * voxel_ml,
        mean_hu=float(hu.mean()),
        laa950_percent=percent(int(np.count_nonzero(hu < LAA_HU))),
        perc15_hu=float(np.percentile(hu, 15)),
        haa_percent=percent(int(np.count_nonzero((hu >= HAA_RANGE[0]) & (hu <= HAA_RANGE[1])))),
        ggo_ml=ggo * voxel_ml,
        ggo_percent=percent(ggo),
        consolidation_ml=consolidation * voxel_ml,
        consolidation_percent=percent(consolidation),
        vessel_ml=int(np.count_nonzero(vessels)) * voxel_ml,
    )
