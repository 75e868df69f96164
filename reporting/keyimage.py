"""Key slices in lung window with overlays, rendered as RGB for Secondary Capture.

Lung window W 1500 / L -600; lung contour green, emphysema blue, ground glass yellow,
consolidation orange (vessels are not in the opacity overlays: ``densitometry.excluded``);
nodule candidates circled with labels; a legend of the overlays shown; 50 mm scale bar;
orientation letters from the volume's affine (DICOM LPS). An analyzer's continuous map (the
diffusion anomaly map) gets a key image of its own: a colour overlay with a colour bar.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from inference.findings import Analysis, SliceMap
from inference.volume import Volume

WINDOW, LEVEL = 1500.0, -600.0
WIDTH = 768
LEGEND = {
    "emphysema": "emphysema (< -950 HU)",
    "ground_glass": "ground glass (-700 to -300 HU, no vessels)",
    "consolidation": "consolidation (-300 to +50 HU, no vessels)",
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "emphysema": (60, 140, 255),
    "ground_glass": (255, 230, 0),
    "consolidation": (255, 120, 0),
}
OTHER = (255, 0, 255)
CONTOUR = (0, 230, 0)
LUNG_MASKS = ("lung_left", "lung_right")


def _letter(direction: npt.NDArray[np.float64]) -> str:
    axis = int(np.argmax(np.abs(direction)))
    return ("LR", "PA", "HF")[axis][0 if direction[axis] > 0 else 1]


def _edge(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def key_slices(analysis: Analysis, volume: Volume, limit: int = 4) -> list[int]:
    """Key slices of present findings (in finding order, unique), else the middle slice."""
    seen: list[int] = []
    for f in analysis.findings:
        z = f.key_slice
        if f.present and z is not None and z not in seen and 0 <= z < volume.shape[0]:
            seen.append(z)
    return seen[:limit] or [volume.shape[0] // 2]


def key_image(analysis: Analysis, volume: Volume, z: int) -> npt.NDArray[np.uint8]:
    """Slice ``z`` in lung window with the overlays described in the module docstring."""
    hu = volume.voxels[z].astype(np.float32)
    grey = np.clip((hu - (LEVEL - WINDOW / 2)) / WINDOW * 255.0, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    for name, mask3d in analysis.masks.items():
        if name in LUNG_MASKS:
            continue
        m = mask3d[z]
        colour = np.array(COLOURS.get(name, OTHER), dtype=np.float32)
        rgb[m] = 0.45 * rgb[m] + 0.55 * colour
    for name in LUNG_MASKS:
        if name in analysis.masks:
            rgb[_edge(analysis.masks[name][z])] = CONTOUR
    rows, cols = grey.shape
    _, dy, dx = volume.spacing
    scale = WIDTH / (cols * dx)
    size = (WIDTH, max(1, round(rows * dy * scale)))
    image = Image.fromarray(rgb.astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=24)
    inverse = np.linalg.inv(volume.affine)
    for f in analysis.findings:
        if f.location is None or f.key_slice != z:
            continue
        x, y, _, _ = inverse @ np.array([*f.location, 1.0])
        px, py = (x + 0.5) * dx * scale, (y + 0.5) * dy * scale
        r = 28
        draw.ellipse([px - r, py - r, px + r, py + r], outline=(255, 40, 40), width=3)
        kind = "p" if f.calibrated else "score"
        draw.text(
            (px + r + 4, py - r),
            f"{f.label} {kind} {f.score or 0:.2f}",
            font=font,
            fill=(255, 40, 40),
        )
    bar = 50.0 * scale
    draw.line([(20, size[1] - 30), (20 + bar, size[1] - 30)], fill=(255, 255, 255), width=4)
    draw.text((20, size[1] - 62), "50 mm", font=font, fill=(255, 255, 255))
    row_dir = volume.affine[:3, 0]
    col_dir = volume.affine[:3, 1]
    half_w, half_h = size[0] / 2, size[1] / 2
    for letter, pos in (
        (_letter(row_dir), (size[0] - 30, half_h)),
        (_letter(-row_dir), (10, half_h)),
        (_letter(col_dir), (half_w, size[1] - 34)),
        (_letter(-col_dir), (half_w, 8)),
    ):
        draw.text(pos, letter, font=font, fill=(255, 255, 0))
    draw.text(
        (size[0] - 200, 8), f"slice {z + 1}/{volume.shape[0]}", font=font, fill=(255, 255, 255)
    )
    _legend(draw, analysis, z)
    return np.asarray(image, dtype=np.uint8)


def _legend(draw: ImageDraw.ImageDraw, analysis: Analysis, z: int) -> None:
    """One line per overlay drawn on this slice, in its colour (top left)."""
    small = ImageFont.load_default(size=18)
    y = 8
    if any(name in analysis.masks for name in LUNG_MASKS):
        draw.text((10, y), "lung contour", font=small, fill=CONTOUR)
        y += 22
    for name, mask in analysis.masks.items():
        if name in LUNG_MASKS or not mask[z].any():
            continue
        draw.rectangle([10, y + 4, 24, y + 18], fill=COLOURS.get(name, OTHER))
        draw.text(
            (30, y), LEGEND.get(name, name.replace("_", " ")), font=small, fill=(255, 255, 255)
        )
        y += 22


def _heat(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """0..1 -> a blue-to-red colour ramp (cool: barely departs, hot: far from healthy)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    stops = np.array([[0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]], np.float32)
    position = v * (len(stops) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(stops) - 2)
    frac = position - low
    mixed = stops[low[..., 0]] * (1 - frac) + stops[low[..., 0] + 1] * frac
    return np.asarray(mixed, dtype=np.float32)


def map_image(analysis: Analysis, volume: Volume, shown: SliceMap, z: int) -> npt.NDArray[np.uint8]:
    """Slice ``z`` in lung window with ``shown`` (a continuous map, e.g. the diffusion anomaly
    map) as a colour overlay inside the lungs, the lung contour, a colour bar with the map's
    title and scale, and its note (a reduced procedure) in the image."""
    hu = volume.voxels[z].astype(np.float32)
    grey = np.clip((hu - (LEVEL - WINDOW / 2)) / WINDOW * 255.0, 0, 255)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    values = shown.values[shown.slices.index(z)] / shown.scale
    lungs = [analysis.masks[k][z] for k in LUNG_MASKS if k in analysis.masks]
    inside = np.logical_or.reduce(lungs) if lungs else np.ones(hu.shape, dtype=np.bool_)
    alpha = (np.clip(values, 0.0, 1.0) * 0.7 * inside)[..., None]
    rgb = rgb * (1 - alpha) + _heat(values) * alpha
    for name in LUNG_MASKS:
        if name in analysis.masks:
            rgb[_edge(analysis.masks[name][z])] = CONTOUR
    rows, cols = grey.shape
    _, dy, dx = volume.spacing
    scale = WIDTH / (cols * dx)
    size = (WIDTH, max(1, round(rows * dy * scale)))
    image = Image.fromarray(rgb.astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (WIDTH, size[1] + 110), (0, 0, 0))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=18)
    draw.text((10, 8), shown.title, font=font, fill=(255, 255, 255))
    draw.text(
        (size[0] - 200, 8), f"slice {z + 1}/{volume.shape[0]}", font=font, fill=(255, 255, 255)
    )
    ramp = _heat(np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :].repeat(16, axis=0))
    bar = Image.fromarray(ramp.astype(np.uint8)).resize((300, 16))
    top = size[1] + 10
    canvas.paste(bar, (10, top))
    draw.text((10, top + 20), "0", font=font, fill=(255, 255, 255))
    draw.text((250, top + 20), f"{shown.scale:.2g}+", font=font, fill=(255, 255, 255))
    draw.text((330, top - 2), "lung contour", font=font, fill=CONTOUR)
    draw.text(
        (10, top + 44),
        (shown.note or "card's full procedure") + "; not for primary diagnosis",
        font=ImageFont.load_default(size=14),
        fill=(255, 200, 0) if shown.note else (255, 255, 255),
    )
    return np.asarray(canvas, dtype=np.uint8)


def map_slices(analysis: Analysis) -> list[tuple[SliceMap, int]]:
    """The slice to show of every map: its analyzer's located finding's key slice, else the
    slice where the map is highest."""
    shown = []
    for result in analysis.results:
        keys = [f.key_slice for f in result.findings if f.key_slice is not None]
        for m in result.maps:
            z = next((k for k in keys if k in m.slices), None)
            if z is None:
                z = m.slices[int(np.argmax(m.values.reshape(len(m.slices), -1).max(axis=1)))]
            shown.append((m, z))
    return shown
