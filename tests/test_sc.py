"""Summary Secondary Capture: dciodvfy-clean, pixels carry text and the alert colour."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom

from inference.loading import load_series
from reporting.sc import build_key_image_scs, build_summary_sc
from tests.factory import ct_series, write_series
from tests.reporting_factory import make_analysis
from tests.test_sr import dciodvfy, dciodvfy_warnings


def test_summary_sc(tmp_path: Path) -> None:
    paths = write_series(ct_series(rows=16, columns=16), tmp_path / "src")
    volume = load_series(paths)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    sc = build_summary_sc(make_analysis(volume), volume, sources, "largest thin-slice lung series")
    out = tmp_path / "summary.sc.dcm"
    sc.save_as(out)
    assert dciodvfy(out) == []
    assert dciodvfy_warnings(out) == []
    back = pydicom.dcmread(out)
    assert back.BurnedInAnnotation == "YES"
    assert back.StudyInstanceUID == volume.study_uid
    pixels = back.pixel_array
    assert pixels.shape == (1024, 1024, 3)
    text = (pixels.max(axis=2) > 128).mean(axis=1)
    assert (text[:200] > 0).sum() > 20
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 120) & (pixels[..., 2] < 100)
    assert red.sum() > 200
    # The synthetic lung is -1000 HU, so the histogram's emphysema-range (blue) bar is drawn.
    blue = (pixels[..., 2] > 200) & (pixels[..., 0] < 120) & (pixels[..., 1] > 120)
    assert blue[500:800].sum() > 1000


def test_key_image_sc(tmp_path: Path) -> None:
    paths = write_series(ct_series(rows=64, columns=64), tmp_path / "src")
    volume = load_series(paths)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    lung = np.zeros(volume.shape, dtype=bool)
    lung[:, 10:54, 8:30] = True
    emphysema = np.zeros_like(lung)
    emphysema[:, 20:30, 12:20] = True
    analysis = replace(make_analysis(volume), masks={"lung_right": lung, "emphysema": emphysema})
    scs = build_key_image_scs(analysis, volume, sources)
    assert len(scs) == 1
    out = tmp_path / "key-1.sc.dcm"
    scs[0].save_as(out)
    assert dciodvfy(out) == []
    assert dciodvfy_warnings(out) == []
    pixels = pydicom.dcmread(out).pixel_array.astype(int)
    assert pixels.std() > 10
    green = (pixels[..., 1] > 200) & (pixels[..., 0] < 60) & (pixels[..., 2] < 60)
    blue = (pixels[..., 2] > pixels[..., 0] + 80) & (pixels[..., 2] > 150)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert green.sum() > 500 and blue.sum() > 2000 and red.sum() > 200
