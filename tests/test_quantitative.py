"""Quantitative analysis: phantoms with known truth, and relations on the two real CTs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from inference import ensemble
from inference.findings import NO_PATHOLOGY, Analysis, most_dangerous
from inference.fusion.rules import RuleBasedFusion
from inference.loading import load_series
from inference.quant import analyzer
from inference.quant.densitometry import measure
from inference.quant.nodules import find
from inference.quant.segmentation import segment
from inference.volume import Volume
from tests.conftest import testdata
from tests.factory import ct_series, write_series

Grid = npt.NDArray[np.float64]
SPACING = (2.0, 1.0, 1.0)  # z, y, x mm


def inside(
    z: Grid, y: Grid, x: Grid, centre: tuple[float, float, float], axes: tuple[float, float, float]
) -> npt.NDArray[np.bool_]:
    return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + (
        (z - centre[2]) / axes[2]
    ) ** 2 <= 1


RIGHT, LEFT = (-45.0, 0.0, 80.0), (45.0, 0.0, 80.0)  # patient x: right is negative (LPS)
LUNG_AXES = (32.0, 45.0, 60.0)


def phantom(z: Grid, y: Grid, x: Grid) -> Grid:
    """Body at 40 HU; two ellipsoid lungs at -850 HU; in the left lung an emphysema region
    (-980), a ground-glass region (-500) and a consolidation (0 HU); a 10 mm solid nodule in
    the right lung and a 4 mm vessel running 50 mm craniocaudally in the left."""
    hu = np.full(np.broadcast(z, y, x).shape, -1000.0)
    hu[((x / 100) ** 2 + (y / 75) ** 2) <= 1] = 40.0
    for centre in (RIGHT, LEFT):
        hu[inside(z, y, x, centre, LUNG_AXES)] = -850.0
    hu[inside(z, y, x, (50.0, -15.0, 100.0), (12.0, 12.0, 16.0))] = -980.0
    hu[inside(z, y, x, (40.0, 15.0, 60.0), (12.0, 12.0, 14.0))] = -500.0
    hu[inside(z, y, x, (50.0, 20.0, 100.0), (8.0, 8.0, 10.0))] = 0.0
    hu[inside(z, y, x, (-45.0, 10.0, 70.0), (5.0, 5.0, 5.0))] = 40.0
    vessel = (((x - 35.0) ** 2 + (y + 10.0) ** 2) <= 2.0**2) & (np.abs(z - 80.0) <= 25.0)
    hu[vessel] = 40.0
    return hu


@pytest.fixture(scope="module")
def phantom_volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    series = ct_series(
        80,
        200,
        220,
        pixel_spacing=1.0,
        slice_spacing=2.0,
        hu=phantom,
        origin=(-110.0, -100.0, 0.0),
        seed="phantom",
    )
    return load_series(write_series(series, tmp_path_factory.mktemp("phantom")))


def truth(volume: Volume) -> dict[str, float]:
    """Voxel-exact truth from the same definitions on the volume's own grid."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in volume.shape), indexing="ij")
    px = volume.affine[0, 3] + x * volume.spacing[2]
    py = volume.affine[1, 3] + y * volume.spacing[1]
    pz = volume.affine[2, 3] + z * volume.spacing[0]
    left = inside(pz, py, px, LEFT, LUNG_AXES)
    right = inside(pz, py, px, RIGHT, LUNG_AXES)
    hu = volume.voxels
    lungs = left | right
    n = lungs.sum()
    ml = volume.voxel_volume_ml
    return {
        "left_ml": left.sum() * ml,
        "right_ml": right.sum() * ml,
        "laa": 100 * ((hu < -950) & lungs).sum() / n,
        "ggo": 100 * ((hu >= -700) & (hu < -300) & lungs).sum() / n,
        "consolidation": 100 * ((hu >= -300) & (hu <= 50) & lungs).sum() / n,
    }


def test_phantom_volumes_and_fractions(phantom_volume: Volume) -> None:
    masks = segment(phantom_volume)
    density = measure(phantom_volume, masks, sharp_kernel=False)
    expected = truth(phantom_volume)
    left, right = density.regions["left lung"], density.regions["right lung"]
    assert left.volume_ml == pytest.approx(expected["left_ml"], rel=0.03)
    assert right.volume_ml == pytest.approx(expected["right_ml"], rel=0.03)
    total = density.total
    assert total.laa950_percent == pytest.approx(expected["laa"], abs=0.5)
    assert total.ggo_percent == pytest.approx(expected["ggo"], abs=0.5)
    assert total.consolidation_percent == pytest.approx(expected["consolidation"], abs=0.5)
    thirds = [density.regions[t].volume_ml for t in ("lower third", "middle third", "upper third")]
    assert sum(thirds) == pytest.approx(total.volume_ml, rel=1e-6)
    assert thirds[1] > thirds[0] and thirds[1] > thirds[2]  # an ellipsoid is widest mid-way


def test_phantom_sphere_found_cylinder_not(phantom_volume: Volume) -> None:
    masks = segment(phantom_volume)
    density = measure(phantom_volume, masks, sharp_kernel=False)
    candidates = find(phantom_volume, masks, density.values)
    assert candidates, "the 10 mm sphere must be found"
    best = candidates[0]
    assert np.linalg.norm(np.subtract(best.centre, (-45.0, 10.0, 70.0))) < 3.0
    assert best.diameter_mm == pytest.approx(10.0, abs=2.5)
    for candidate in candidates:  # nothing on the vessel
        cx, cy, cz = candidate.centre
        assert not (abs(cx - 35) < 6 and abs(cy + 10) < 6 and abs(cz - 80) < 30)


def test_consolidation_at_the_lung_edge_stays_inside_the_lung(tmp_path: Path) -> None:
    def bite(z: Grid, y: Grid, x: Grid) -> Grid:
        hu = phantom(z, y, x)
        dense = inside(z, y, x, (-45.0, 40.0, 80.0), (20.0, 12.0, 30.0)) & inside(
            z, y, x, RIGHT, LUNG_AXES
        )
        hu[dense] = 20.0  # posterior consolidation against the chest wall
        return hu

    series = ct_series(
        80,
        200,
        220,
        pixel_spacing=1.0,
        slice_spacing=2.0,
        hu=bite,
        origin=(-110.0, -100.0, 0.0),
        seed="bite",
    )
    volume = load_series(write_series(series, tmp_path))
    masks = segment(volume)
    expected = truth(volume)
    assert masks.right.sum() * volume.voxel_volume_ml == pytest.approx(
        expected["right_ml"], rel=0.05
    )


def test_scores_are_monotone_and_fusion_orders_by_severity() -> None:
    rule = analyzer.RULES["Lung opacity"]
    values = [rule.score(v) for v in (0, 2.5, 5, 10, 60)]
    assert values == sorted(values) and values[2] == pytest.approx(0.5)
    assert most_dangerous([]) == NO_PATHOLOGY


@pytest.fixture(scope="module")
def volumes() -> dict[str, Volume]:
    return {
        "normal": load_series(sorted(testdata("chest-ct-100-lung").glob("*.dcm"))),
        "pneumonia": load_series(sorted(testdata("chest-ct-248-pneumonia-jpegll").glob("*.dcm"))),
    }


@pytest.fixture(scope="module")
def real(volumes: dict[str, Volume]) -> dict[str, Analysis]:
    return {
        "normal": ensemble.Ensemble().run(volumes["normal"], sharp_kernel=True),
        "pneumonia": ensemble.Ensemble().run(volumes["pneumonia"], sharp_kernel=False),
    }


def test_real_ct_airways_leave_the_lungs(volumes: dict[str, Volume]) -> None:
    """Trachea and main bronchi are found on both CTs (tens of mL, from the top of the
    trachea down past the carina) and no lung voxel lies on a slice above the apices."""
    for volume in volumes.values():
        masks = segment(volume)
        airway_ml = masks.airways.sum() * volume.voxel_volume_ml
        assert 15 <= airway_ml <= 120
        airway_z = np.flatnonzero(masks.airways.any(axis=(1, 2)))
        assert (airway_z.max() - airway_z.min()) * volume.spacing[0] >= 80
        assert not (masks.lungs & masks.airways).any()
        per_slice = masks.lungs.sum(axis=(1, 2)) * volume.spacing[1] * volume.spacing[2]
        top = int(np.flatnonzero(per_slice > 0).max())
        # the top lung slice is an apex (a few cm^2 or more), not a stray rim of trachea
        assert per_slice[top - 1] > 100.0  # mm^2


def _measure(analysis: Analysis, name: str, region: str = "both lungs") -> float:
    (result,) = analysis.results
    return next(m.value for m in result.measurements if m.name == name and m.region == region)


def test_real_cts_relations(real: dict[str, Analysis]) -> None:
    for analysis in real.values():
        assert 2000 <= _measure(analysis, "Lung volume") <= 8000
        for side in ("left lung", "right lung"):
            assert 700 <= _measure(analysis, "Lung volume", side) <= 5000
    opacity = {k: _measure(a, "Percentage of opacity") for k, a in real.items()}
    assert opacity["pneumonia"] > 1.5 * opacity["normal"]
    scores = {
        k: {f.label: float(f.score or 0.0) for f in a.findings if f.location is None}
        for k, a in real.items()
    }
    for label in ("Lung opacity", "Consolidation"):
        assert scores["pneumonia"][label] > scores["normal"][label] + 0.4
    assert real["pneumonia"].fusion.most_dangerous_pathology_type == "Consolidation"
    # Both are pathological (the "mostly normal" CT has a real 2 cm nodule), but extensive
    # measured airspace disease outranks one unconfirmed candidate.
    fused = {k: a.fusion.probability_of_pathology for k, a in real.items()}
    assert fused["pneumonia"] > fused["normal"]
    assert all(a.fusion.pathology for a in real.values())
    # the sharp-kernel noise correction keeps the normal lung's emphysema index normal
    assert _measure(real["normal"], "LAA%-950") < 3.0


def test_real_ct_nodule_candidates(real: dict[str, Analysis]) -> None:
    """The 100-slice CT has a round solid lesion of about 2 cm in the left lung (slice 48-50,
    lateral): it must be the first candidate; no candidate on the pneumonia CT's domes."""
    nodules = [f for f in real["normal"].findings if f.location is not None]
    assert nodules and nodules[0].location is not None
    first = nodules[0]
    assert first.location is not None and first.location[0] > 0  # patient left (LPS +x)
    assert first.key_slice is not None and 44 <= first.key_slice <= 54
    assert next(m.value for m in first.measurements if m.name == "Diameter") >= 15
    pneumonia = [f for f in real["pneumonia"].findings if f.location is not None]
    assert all((f.key_slice or 0) > 40 for f in pneumonia)


def test_rule_based_fusion_says_what_it_is(real: dict[str, Analysis]) -> None:
    fusion = real["pneumonia"].fusion
    assert fusion.method == RuleBasedFusion.name and not fusion.calibrated
    assert fusion.pathology and fusion.probability_of_pathology >= 0.5
    assert set(real["pneumonia"].masks) == {
        "lung_left",
        "lung_right",
        "emphysema",
        "ground_glass",
        "consolidation",
    }
