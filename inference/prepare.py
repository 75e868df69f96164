"""From input files to what the analysis needs, study by study: the selection decision
with a verdict for every series, and the chosen series as a checked Volume with its source
headers (for the report's patient/study modules and references), or the reason why nothing
in the study can be analysed.

Candidates are tried in preference order: one that fails to load (an undecodable transfer
syntax, truncated pixels) or the chest check gives way to the next, and its verdict says why.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from config import Settings
from inference import errors
from inference.chest import ChestCoverage, check_chest
from inference.errors import InvalidSeries
from inference.headers import SliceHeader, read_headers
from inference.intake import open_input
from inference.loading import load_ordered, pixel_digest
from inference.selection import Selection, Verdict, pick
from inference.volume import Volume


@dataclass(frozen=True)
class StudyPlan:
    """One study: every series' verdict, and the volume to analyse or why there is none."""

    study_uid: str
    verdicts: tuple[Verdict, ...]
    volume: Volume | None
    sources: tuple[Dataset, ...]
    chest: ChestCoverage | None
    reason_code: str | None
    reason: str | None
    notes: tuple[str, ...] = ()

    @property
    def chosen(self) -> Verdict | None:
        return next((v for v in self.verdicts if v.reason == "selected"), None)


def prepare(path: Path, settings: Settings = Settings()) -> list[StudyPlan]:
    """Every study found under ``path`` (folder, ZIP, DICOMDIR or file)."""
    with open_input(path, settings.intake) as intake:
        plans = prepare_files(intake.files, settings)
        return [replace(p, notes=(*intake.notes, *p.notes)) for p in plans]


def prepare_files(files: Sequence[Path], settings: Settings = Settings()) -> list[StudyPlan]:
    studies: dict[str, dict[str, list[SliceHeader]]] = defaultdict(lambda: defaultdict(list))
    unreadable = 0
    for path in files:
        try:
            for header in read_headers(path):
                studies[header.study_uid][header.series_uid].append(header)
        except InvalidSeries:
            unreadable += 1
    if not studies:
        raise InvalidSeries(
            errors.NO_SERIES, f"no readable DICOM images ({unreadable} unreadable files)"
        )
    notes = (f"{unreadable} unreadable files skipped",) if unreadable else ()
    return [_plan(uid, series, settings, notes) for uid, series in studies.items()]


def _plan(
    study_uid: str,
    series: dict[str, list[SliceHeader]],
    settings: Settings,
    notes: tuple[str, ...],
) -> StudyPlan:
    selection = pick(series, settings.selection, settings.validation, pixel_digest)
    verdicts = {v.series_uid: v for v in selection.verdicts}
    last_error: InvalidSeries | None = None
    for uid, ordered in selection.candidates:
        try:
            volume = load_ordered(ordered)
            chest = check_chest(volume, settings.validation)
        except InvalidSeries as exc:
            verdicts[uid] = replace(verdicts[uid], valid=False, reason=f"{exc.code}: {exc.message}")
            last_error = exc
            continue
        _mark_selected(verdicts, uid)
        paths = list(dict.fromkeys(h.path for h in ordered.slices))
        sources = tuple(dcmread(p, stop_before_pixels=True) for p in paths)
        return StudyPlan(
            study_uid,
            _in_order(selection, verdicts),
            volume,
            sources,
            chest,
            None,
            None,
            (*notes, *ordered.notes),
        )
    if last_error is not None:
        code, reason = last_error.code, last_error.message
    else:
        code, reason = _why_nothing(selection)
    return StudyPlan(study_uid, _in_order(selection, verdicts), None, (), None, code, reason, notes)


def _mark_selected(verdicts: dict[str, Verdict], chosen: str) -> None:
    for uid, verdict in list(verdicts.items()):
        if uid == chosen:
            verdicts[uid] = replace(verdict, reason="selected")
        elif verdict.valid:
            verdicts[uid] = replace(verdict, reason=verdict.reason.replace("selected", "candidate"))


def _in_order(selection: Selection, verdicts: dict[str, Verdict]) -> tuple[Verdict, ...]:
    return tuple(verdicts[v.series_uid] for v in selection.verdicts)


def _why_nothing(selection: Selection) -> tuple[str, str]:
    """The study's reason: the most informative series-level reason."""
    reasons = [v.reason for v in selection.verdicts if v.reason]
    for verdict in selection.verdicts:
        code = verdict.reason.split(":", 1)[0]
        if code not in (errors.NOT_CT, errors.LOCALIZER_ONLY, errors.NOT_ORIGINAL):
            return code, verdict.reason.split(": ", 1)[-1]
    if reasons:
        code = reasons[0].split(":", 1)[0]
        return code, "no CT image series to analyse: " + "; ".join(reasons)
    return errors.NO_SERIES, "no series"
