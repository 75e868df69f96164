"""Rendering of the summary page as an RGB image (Pillow, scalable built-in FreeType font).

The font is Pillow's ``ImageFont.load_default(size=...)`` so the product needs no system font.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from inference.ensemble import FEATURE_TITLES
from inference.findings import Analysis, Fusion
from inference.neural import TITLES as NEURAL_TITLES

DISCLAIMER = "Not for primary diagnosis. Results must be reviewed by a radiologist."
PAGE = (1024, 1024)
BACKGROUND = (0, 0, 0)
TEXT = (235, 235, 235)
ALERT = (255, 90, 60)
EMPHYSEMA_BLUE = (80, 160, 255)


def lung_histogram(
    voxels: npt.NDArray[np.generic], lung: npt.NDArray[np.bool_] | None
) -> npt.NDArray[np.float64]:
    """Fractions of lung voxels in 25 HU bins from -1000 to 0 (whole volume if no lung mask)."""
    values = voxels[lung] if lung is not None and lung.any() else voxels
    counts, _ = np.histogram(values, bins=40, range=(-1000.0, 0.0))
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def _draw_histogram(
    draw: ImageDraw.ImageDraw,
    fractions: npt.NDArray[np.float64],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    width: int = 880,
) -> None:
    left, top, height = 60, 560, 200
    draw.text((40, top - 50), "Lung density histogram (HU)", font=font, fill=TEXT)
    draw.line([(left, top + height), (left + width, top + height)], fill=TEXT, width=2)
    peak = float(fractions.max()) or 1.0
    bar = width / len(fractions)
    for i, f in enumerate(fractions):
        colour = EMPHYSEMA_BLUE if -1000 + 25 * i < -950 else (200, 200, 200)
        h = height * float(f) / peak
        x = left + i * bar
        draw.rectangle([x + 1, top + height - h, x + bar - 2, top + height], fill=colour)
    for hu in (-1000, -750, -500, -250, 0):
        x = left + width * (hu + 1000) / 1000
        draw.text((x - 28, top + height + 8), str(hu), font=font, fill=TEXT)
    legend = (left + 360, top - 50) if width > 600 else (40, top - 24)
    draw.text(legend, "blue: below -950 HU (emphysema)", font=font, fill=EMPHYSEMA_BLUE)


def _draw_contributions(
    draw: ImageDraw.ImageDraw,
    fusion: Fusion,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    """The trained fusion's largest SHAP contributions as a small bar chart: each feature
    with its value, and under it a bar, red when it pushed towards pathology and blue when
    away, its length relative to the largest contribution."""
    left, top, right = 520, 510, 990
    small = ImageFont.load_default(size=17)
    draw.text((left, top), f"Fusion: {fusion.method} {fusion.version}"[:34], font=font, fill=TEXT)
    draw.text((left, top + 28), "largest SHAP contributions (log-odds)", font=small, fill=TEXT)
    shown = fusion.top_features[:5]
    largest = max((abs(s) for _, _, s in shown), default=0.0) or 1.0
    centre = (left + right) // 2
    half = (right - left) // 2
    y = top + 58
    for name, value, shap in shown:
        number = "missing" if math.isnan(value) else f"{value:.3g}"
        draw.text((left, y), f"{_display_feature(name)} = {number}"[:46], font=small, fill=TEXT)
        draw.text((right - 52, y), f"{shap:+.2f}", font=small, fill=TEXT)
        length = half * abs(shap) / largest
        box = [centre, y + 22, centre + length, y + 36]
        if shap < 0:
            box = [centre - length, y + 22, centre, y + 36]
        draw.rectangle(box, fill=ALERT if shap >= 0 else EMPHYSEMA_BLUE)
        draw.line([(centre, y + 20), (centre, y + 38)], fill=TEXT, width=1)
        y += 48


def _display_feature(name: str) -> str:
    """The analyzer's own title for a feature (``HAA% (-600 to -250 HU) (both lungs)``);
    else ``quant.both_lungs.x_y`` -> ``x y (both lungs)``."""
    if name in FEATURE_TITLES:
        return FEATURE_TITLES[name]
    parts = name.split(".")
    if len(parts) == 3:
        return f"{parts[2].replace('_', ' ')} ({parts[1].replace('_', ' ')})"
    return parts[-1].replace("_", " ")


def summary_page(
    analysis: Analysis,
    selection_reason: str,
    series_label: str,
    histogram: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.uint8]:
    """The summary page: overall result, findings table, lung density histogram, the trained
    fusion's largest contributions (when one ran), series analysed and why, disclaimer."""
    image = Image.new("RGB", PAGE, BACKGROUND)
    draw = ImageDraw.Draw(image)
    big = ImageFont.load_default(size=34)
    font = ImageFont.load_default(size=22)
    fusion = analysis.fusion
    draw.text((40, 30), "ctnode chest CT AI summary", font=big, fill=TEXT)
    y = 90
    for line in verdict_lines(analysis):
        draw.text((40, y), line[:84], font=font, fill=ALERT if fusion.pathology else TEXT)
        y += 30
    lungs = lungs_line(analysis)
    if lungs:
        draw.text((40, y), lungs[:84], font=font, fill=TEXT)
        y += 30
    y += 4
    small = ImageFont.load_default(size=17)
    for line in neural_lines(analysis):
        draw.text((40, y), line, font=small, fill=TEXT)
        y += 22
    y = max(y + 8, 180)
    columns = (40, 300, 490)
    for x, title in zip(columns, ("Finding", "Score (present at)", "Measurements"), strict=True):
        draw.text((x, y), title, font=font, fill=TEXT)
    y += 34
    for finding in (f for f in analysis.findings if f.analyzer not in NEURAL_TITLES):
        if y > 470:
            break
        colour = ALERT if finding.present else TEXT
        score = "-" if finding.score is None else f"{finding.score:.2f}"
        if finding.threshold is not None:
            unit = _display_unit(finding.threshold.unit)
            score += f" (>{finding.threshold.value:g}{'' if unit == '%' else ' '}{unit})"
        draw.text((columns[0], y), finding.label[:24], font=font, fill=colour)
        draw.text((columns[1], y), score, font=font, fill=colour)
        for m in finding.measurements or ():
            draw.text(
                (columns[2], y),
                f"{m.name} {m.value:.4g} {_display_unit(m.unit)}"[:40],
                font=font,
                fill=colour,
            )
            y += 28
        y += 8 if finding.measurements else 36
    chart = bool(fusion.top_features)
    if histogram is not None:
        _draw_histogram(draw, histogram, font, width=420 if chart else 880)
    if chart:
        _draw_contributions(draw, fusion, font)
    not_run = not_run_line(analysis)
    if not_run:
        small = ImageFont.load_default(size=17)
        draw.text((40, PAGE[1] - 180), not_run[:110], font=small, fill=TEXT)
    draw.text((40, PAGE[1] - 150), f"Series: {series_label[:80]}", font=font, fill=TEXT)
    draw.text((40, PAGE[1] - 115), f"Why: {selection_reason[:80]}", font=font, fill=TEXT)
    draw.text((40, PAGE[1] - 60), DISCLAIMER, font=font, fill=ALERT)
    return np.asarray(image, dtype=np.uint8)


def verdict_lines(analysis: Analysis) -> list[str]:
    """The overall result with the finding its number comes from, then the most relevant
    finding when that is another one (the rule-based fusion's number is the highest score,
    its most relevant finding the most severe one present): neither reads as the other's."""
    fusion = analysis.fusion
    verdict = "PATHOLOGY SUSPECTED" if fusion.pathology else "No pathology detected"
    kind = "probability" if fusion.calibrated else "score (not calibrated)"
    scored = [f for f in analysis.findings if f.score is not None]
    top = max(scored, key=lambda f: float(f.score or 0.0), default=None)
    first = f"{verdict}: {kind} {fusion.probability_of_pathology:.2f}"
    if top is not None and math.isclose(float(top.score or 0.0), fusion.probability_of_pathology):
        first += f", from {top.label}"
    lines = [first]
    relevant = fusion.most_dangerous_pathology_type
    if relevant and (top is None or relevant != top.label):
        score = next((f.score for f in scored if f.label == relevant), None)
        lines.append(
            f"Most relevant finding: {relevant}"
            + (f" (score {score:.2f})" if score is not None else "")
        )
    return lines


def lungs_line(analysis: Analysis) -> str:
    """Lung volumes (both, left, right) and mean lung density, from the analysis that
    measured them."""
    found: dict[tuple[str, str], float] = {}
    for result in analysis.results:
        for m in result.measurements:
            if m.name in ("Lung volume", "Mean lung density"):
                found.setdefault((m.name, m.region), m.value)
    total = found.get(("Lung volume", "both lungs"))
    if total is None:
        return ""
    line = f"Lungs {total:.0f} mL"
    left, right = found.get(("Lung volume", "left lung")), found.get(("Lung volume", "right lung"))
    if left is not None and right is not None:
        line += f" (left {left:.0f}, right {right:.0f})"
    density = found.get(("Mean lung density", "both lungs"))
    if density is not None:
        line += f", mean density {density:.0f} HU"
    return line


def neural_lines(analysis: Analysis, width: int = 108) -> list[str]:
    """One line per neural analyzer that ran: its labels at or above 0.5 (or present at
    their own thresholds, where its model card gives them: MedNeXt), most probable first, as
    many as fit in ``width`` characters (all scores are in the SR and the JSON; the page
    names what stands out); then how it ran when not as its model card says (a reduced
    procedure)."""
    lines = []
    for result in analysis.results:
        title = NEURAL_TITLES.get(result.analyzer)
        if title is None:
            continue
        own = any(f.threshold is not None for f in result.findings)
        high = sorted(
            (
                f
                for f in result.findings
                if f.score is not None and (f.present if own else f.score >= 0.5)
            ),
            key=lambda f: -(f.score or 0.0),
        )
        caveat = f"{result.notes[0]}; " if result.notes else ""  # e.g. fVLM on the lungs only
        notes = [f"{title}: {m.note}"[:width] for m in result.maps if m.note]
        line = f"{title} ({caveat}not calibrated): "
        if not high:
            empty = "no label at its threshold" if own else "no label at or above 0.50"
            lines += [line + empty, *notes]
            continue
        items = [f"{f.label} {f.score:.2f}" for f in high]
        shown = 0
        while shown < len(items) and len(line) + len(items[shown]) + 12 <= width:
            line += ("" if shown == 0 else ", ") + items[shown]
            shown += 1
        lines.append(line + (f" and {len(items) - shown} more" if shown < len(items) else ""))
        lines += notes
    return lines


def not_run_line(analysis: Analysis) -> str:
    """The analyzers that gave no result, grouped by reason: the reader knows what the
    result was made without."""
    if not analysis.not_run:
        return ""
    by_reason: dict[str, list[str]] = {}
    for name, why in analysis.not_run:
        by_reason.setdefault(why.split(";")[0], []).append(name)
    return "Not run: " + "; ".join(
        f"{', '.join(names)} ({why})" for why, names in by_reason.items()
    )


def not_analysed_page(reason: str, series: list[tuple[str, str]]) -> npt.NDArray[np.uint8]:
    """The page a site may ask for when no series of a study could be analysed: the study's
    reason, then each series (label, verdict), so the reader knows nothing was missed."""
    image = Image.new("RGB", PAGE, BACKGROUND)
    draw = ImageDraw.Draw(image)
    big = ImageFont.load_default(size=34)
    font = ImageFont.load_default(size=22)
    draw.text((40, 30), "ctnode chest CT AI: study NOT analysed", font=big, fill=ALERT)
    draw.text((40, 90), f"Why: {reason[:76]}", font=font, fill=TEXT)
    y = 150
    for label, verdict in series[:20]:
        draw.text((40, y), f"{label[:34]}", font=font, fill=TEXT)
        draw.text((450, y), verdict[:48], font=font, fill=TEXT)
        y += 32
    draw.text((40, PAGE[1] - 60), DISCLAIMER, font=font, fill=ALERT)
    return np.asarray(image, dtype=np.uint8)


def _display_unit(ucum: str) -> str:
    """UCUM as a reader expects it on the page: Hounsfield units as HU (the SR keeps the
    UCUM code ``[hnsf'U]``)."""
    return {"[hnsf'U]": "HU"}.get(ucum, ucum)
