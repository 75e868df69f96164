"""The SR of a real chest CT read by two outside readers, with their own code:

- Pixelmed's ``DicomSRValidator`` (Debian's ``libpixelmed-java``), which checks TID 1500 row
  by row: no error, no warning.
- OHIF 3.13's SR extension (``@ohif/extension-cornerstone-dicom-sr`` 3.13.13, pinned in
  ``tests/ohif/package.json``), run in Node by ``tests/ohif/load_sr.js``: loading succeeds,
  every group lands on an image, and each nodule's measurement lands on its key slice with
  its label and numbers. The nodule as OHIF's tool state describes it is drawn over its
  slice into ``docs/ohif-nodule.png`` (``CTNODE_UPDATE_DOCS=1`` rewrites the committed one).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont

from inference import ensemble
from inference.findings import Analysis, Finding
from inference.loading import load_series
from inference.volume import Volume
from reporting.sr import build_sr
from tests.conftest import REPO, testdata

CT = "chest-ct-100-lung"
PIXELMED = Path("/usr/share/java/pixelmed.jar")
OHIF = REPO / "tests" / "ohif"
PICTURE = REPO / "docs" / "ohif-nodule.png"


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Analysis, Volume]:
    """The node's SR of the normal test CT (it has a 2.5 cm nodule)."""
    files = sorted(testdata(CT).glob("*.dcm"))
    volume = load_series(files)
    analysis = ensemble.Ensemble().run(volume, sharp_kernel=True)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    path = tmp_path_factory.mktemp("viewers") / "report.sr.dcm"
    build_sr(analysis, volume, sources).save_as(path, enforce_file_format=True)
    return path, analysis, volume


def test_pixelmed_validator_finds_nothing(real: tuple[Path, Analysis, Volume]) -> None:
    if shutil.which("java") is None or not PIXELMED.is_file():
        pytest.skip("java or Pixelmed (Debian libpixelmed-java) not installed: make tools")
    path, _, _ = real
    # current JDKs refuse the validator's stylesheet without lifting the XPath limits
    limits = [f"-Djdk.xml.{k}=0" for k in ("xpathExprOpLimit", "xpathExprGrpLimit")]
    command = ["java", *limits, "-Djdk.xml.xpathTotalOpLimit=0", "-cp", str(PIXELMED)]
    out = subprocess.run(
        [*command, "com.pixelmed.validate.DicomSRValidator", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = (out.stdout + out.stderr).splitlines()
    assert "Found Root Template TID_1500 (MeasurementReport)" in lines, lines
    findings = [line for line in lines if line.startswith(("Error", "Warning", "Internal"))]
    assert findings == []


def _ohif_modules() -> Path:
    """tests/ohif/node_modules from the committed lock file, installed once per lock."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm (Debian nodejs, npm) not installed: make tools")
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    if int(version.stdout.strip().lstrip("v").split(".")[0] or 0) < 18:
        pytest.skip(f"node {version.stdout.strip()} is older than 18, which OHIF's code needs")
    lock = hashlib.sha256((OHIF / "package-lock.json").read_bytes()).hexdigest()
    stamp = OHIF / "node_modules" / ".ctnode-lock-sha256"
    if not stamp.is_file() or stamp.read_text().strip() != lock:
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=OHIF,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"npm ci failed (no registry?): {done.stderr[-500:]}")
        stamp.write_text(lock)
    return OHIF / "node_modules"


def _load_in_ohif(path: Path) -> dict[str, object]:
    _ohif_modules()
    out = subprocess.run(
        ["node", "load_sr.js", str(path), str(testdata(CT))],
        cwd=OHIF,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    loaded: dict[str, object] = json.loads(out.stdout)
    return loaded


def test_ohif_loads_the_sr_and_draws_each_nodule(
    real: tuple[Path, Analysis, Volume], tmp_path: Path
) -> None:
    path, analysis, volume = real
    loaded = _load_in_ohif(path)
    assert loaded["error"] is None, loaded["error"]
    display_set = loaded["displaySet"]
    assert isinstance(display_set, dict) and display_set["isImagingMeasurementReport"]
    measurements = {m["TrackingIdentifier"]: m for m in display_set["measurements"]}
    assert measurements and all(m["loaded"] for m in measurements.values())
    annotations = {a["annotationUID"]: a for a in loaded["annotations"]}  # type: ignore[attr-defined]
    nodules = [(i, f) for i, f in enumerate(analysis.results[0].findings) if f.location is not None]
    assert nodules, "the normal test CT has a nodule candidate"
    for index, finding in nodules:
        measurement = measurements[f"quantitative/Lung nodule#{index}"]
        uid = volume.slices[finding.key_slice or 0].sop_instance_uid
        assert measurement["ReferencedSOPInstanceUID"] == uid
        assert measurement["graphicType"] == "CIRCLE"
        labels = {item["label"]: item["value"] for item in measurement["labels"]}
        diameter = next(m.value for m in finding.measurements if m.name == "Diameter")
        assert labels["Diameter"] == f"{diameter:.2f} mm"
        assert labels["Score (not calibrated)"] == f"{finding.score:.2f} {{score}}"
        annotation = annotations[measurement["TrackingUniqueIdentifier"]]
        assert annotation["metadata"]["referencedImageId"] == f"dicomfile:{uid}"
        assert annotation["data"]["label"] == f"{diameter:.2f} mm"
        points = np.array(annotation["data"]["renderableData"]["CIRCLE"][0], dtype=float)
        centre = points.mean(axis=0)
        assert finding.location is not None
        # the circle's centre is the nodule's centre in plane, on its slice, of its diameter
        assert np.allclose(centre[:2], finding.location[:2], atol=volume.spacing[2])
        assert abs(centre[2] - finding.location[2]) <= volume.spacing[0] / 2 + 1e-3
        radii = np.linalg.norm(points - centre, axis=1)
        assert np.allclose(radii, diameter / 2, rtol=1e-3)
    first_index, first = nodules[0]
    picture = PICTURE if os.environ.get("CTNODE_UPDATE_DOCS") == "1" else tmp_path / "nodule.png"
    measurement = measurements[f"quantitative/Lung nodule#{first_index}"]
    draw_tool_state(volume, first, annotations[measurement["TrackingUniqueIdentifier"]], picture)
    assert picture.stat().st_size > 10_000


def draw_tool_state(
    volume: Volume, finding: Finding, annotation: dict[str, object], out: Path
) -> None:
    """The slice in lung window, the circle through OHIF's four world points projected back
    onto the image, and OHIF's labels as its text box would list them."""
    z = finding.key_slice or 0
    hu = volume.voxels[z].astype(np.float32)
    grey = np.clip((hu + 1350.0) / 1500.0 * 255.0, 0, 255).astype(np.uint8)
    image = Image.fromarray(grey).convert("RGB")
    scale = 2
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
    data = annotation["data"]
    assert isinstance(data, dict)
    world = np.array(data["renderableData"]["CIRCLE"][0], dtype=float)
    inverse = np.linalg.inv(volume.affine)
    # patient (LPS) -> voxel (column, row); pixel centres at +0.5
    xy = (np.array([(inverse @ np.array([*p, 1.0]))[:2] for p in world]) + 0.5) * scale
    centre = xy.mean(axis=0)
    radius = float(np.linalg.norm(xy - centre, axis=1).mean())
    draw = ImageDraw.Draw(image)
    box = [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]
    draw.ellipse(box, outline=(0, 255, 0), width=3)
    font = ImageFont.load_default(size=22)
    lines = [f"{item['label']}: {item['value']}" for item in data["labels"]]
    x, y = centre[0] + radius + 12, max(8.0, centre[1] - radius)
    if x + 430 > image.width:
        x = max(8.0, centre[0] - radius - 440)
    width = max(draw.textlength(line, font=font) for line in lines)
    draw.rectangle([x - 6, y - 4, x + width + 6, y + 26 * len(lines) + 2], fill=(0, 0, 0))
    for line in lines:
        draw.text((x, y), line, font=font, fill=(255, 255, 0))
        y += 26
    title = f"OHIF 3.13 tool state: {annotation['metadata']['toolName']}, slice {z + 1}"  # type: ignore[index]
    draw.text((10, 10), title, font=font, fill=(255, 255, 255))
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
