"""Labels for fusion training, and their join to the feature table.

Two formats are read as they come:

- CT-RATE's label files: an identifier column (``VolumeName``, e.g. ``train_1_a_1.nii.gz``)
  and the 18 abnormality columns (0/1). The pathology is one of those columns, or ``any
  abnormality`` (the default): 1 when any of the 18 is 1.
- A simple ``study_uid,pathology`` file (0/1); its ``pathology`` column is the default
  label, any other 0/1 column can be chosen by name.

A label's identifier matches a feature row by study UID, series UID or source name (the
input's file or folder name, without ``.zip``, ``.nii.gz`` and the like), so CT-RATE volume
names match studies a site converted to DICOM folders or ZIPs of the same names.

Error messages name CSV line numbers, never identifiers (they may be patient data).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from inference.findings import CT_RATE_LABELS
from training.table import FeatureTable

ANY = "any abnormality"
ID_COLUMNS = ("study_uid", "StudyInstanceUID", "VolumeName", "volume_name", "series_uid")
SUFFIXES = (".nii.gz", ".nii", ".zip", ".tar.gz", ".tgz", ".dcm")


class LabelError(ValueError):
    """Labels that cannot be used for training, with a sentence saying why and what to do."""


@dataclass(frozen=True)
class Labels:
    """0/1 labels by identifier, with the CSV line each came from."""

    pathology: str
    format: str
    id_column: str
    ids: tuple[str, ...]
    y: tuple[int, ...]
    lines: tuple[int, ...]


@dataclass(frozen=True)
class Cohort:
    """Labelled feature rows ready for training, and what the join left out."""

    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.int_]
    rows: tuple[int, ...]
    unlabelled_rows: int
    unknown_label_lines: tuple[int, ...]

    @property
    def positives(self) -> int:
        return int(self.y.sum())


def normalise_id(text: str) -> str:
    """An identifier as matched: stripped, without a known file suffix."""
    value = text.strip()
    lowered = value.lower()
    for suffix in SUFFIXES:
        if lowered.endswith(suffix):
            return value[: -len(suffix)]
    return value


def read_labels(path: Path, pathology: str | None = None, id_column: str | None = None) -> Labels:
    """Read a CT-RATE or ``study_uid,pathology`` CSV; ``pathology`` None means any
    abnormality. ``LabelError`` says which line or column is wrong."""
    header, records = read_table(path)
    column = id_column_of(header, id_column, path.name)
    wanted = pathology or ANY
    ct_rate = all(label in header for label in CT_RATE_LABELS)
    if wanted.lower() == ANY and ct_rate:
        sources = list(CT_RATE_LABELS)
    elif wanted.lower() == ANY and "pathology" in header:
        sources = ["pathology"]
    else:
        match = [h for h in header if h.lower() == wanted.lower()]
        if not match:
            raise LabelError(
                f"{path.name} has no column {wanted!r} (columns: {', '.join(header[:24])}); "
                + (
                    "a CT-RATE file needs all 18 abnormality columns for 'any abnormality'"
                    if wanted.lower() == ANY
                    else "choose the pathology with --pathology"
                )
            )
        sources = match
    ids, ys, lines = [], [], []
    for line, row in records:
        row = {(k or "").strip(): v for k, v in row.items()}
        identifier = normalise_id(row.get(column) or "")
        if not identifier:
            raise LabelError(f"{path.name} line {line}: empty {column!r}")
        values = [binary_label(row.get(s), s, line, path.name) for s in sources]
        ids.append(identifier)
        ys.append(max(values))
        lines.append(line)
    if not ids:
        raise LabelError(f"{path.name} has a header but no labels")
    return Labels(
        pathology=wanted if wanted.lower() != ANY else ANY,
        format="ct-rate" if ct_rate else "simple",
        id_column=column,
        ids=tuple(ids),
        y=tuple(ys),
        lines=tuple(lines),
    )


def read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A labels CSV's header and its rows with their line numbers; ``LabelError`` when the
    file cannot be read or has no header."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in reader.fieldnames or []]
            records = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelError(f"cannot read labels {path}: {exc}") from exc
    if not header:
        raise LabelError(f"{path.name} has no header row")
    return header, records


def id_column_of(header: Sequence[str], chosen: str | None, name: str) -> str:
    if chosen:
        if chosen not in header:
            raise LabelError(f"{name} has no identifier column {chosen!r}")
        return chosen
    for candidate in ID_COLUMNS:
        if candidate in header:
            return candidate
    raise LabelError(
        f"{name} has no identifier column: expected one of {', '.join(ID_COLUMNS)} "
        "(or name it with --id-column)"
    )


def binary_label(value: str | None, column: str, line: int, name: str) -> int:
    text = (value or "").strip().lower()
    if text in ("1", "1.0", "true", "yes"):
        return 1
    if text in ("0", "0.0", "false", "no"):
        return 0
    raise LabelError(f"{name} line {line}: {column!r} is {text or 'empty'!r}, expected 0 or 1")


def join(
    table: FeatureTable, labels: Labels, *, ignore_unknown: bool = False, min_per_class: int = 2
) -> Cohort:
    """The labelled rows of ``table``. Labels naming no feature row are an error unless
    ``ignore_unknown`` (a study that could not be analysed, a typo in an identifier);
    feature rows without a label are left out and counted. Both classes must be present,
    each at least ``min_per_class`` times (stratified cross-validation needs one per fold).
    """
    index: dict[str, int] = {}
    for i in range(len(table)):
        for key in (table.study_uid[i], table.series_uid[i], normalise_id(table.source[i])):
            if key:
                index.setdefault(key, i)
    chosen: dict[int, tuple[int, int]] = {}  # row -> (label, line)
    unknown: list[int] = []
    for identifier, label, line in zip(labels.ids, labels.y, labels.lines, strict=True):
        row = index.get(identifier)
        if row is None:
            unknown.append(line)
            continue
        earlier = chosen.get(row)
        if earlier is not None and earlier[0] != label:
            raise LabelError(f"lines {earlier[1]} and {line} give the same study different labels")
        chosen[row] = (label, line)
    if unknown and not ignore_unknown:
        shown = ", ".join(str(n) for n in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise LabelError(
            f"{len(unknown)} of {len(labels.ids)} labels name studies that are not in the "
            f"features (lines {shown}): extract their features, fix the identifiers, or pass "
            "--ignore-unknown-labels to leave them out"
        )
    rows = tuple(sorted(chosen))
    y = np.array([chosen[r][0] for r in rows], dtype=np.int_)
    if not rows:
        raise LabelError("no label matches a feature row: check the identifier column")
    counts = {0: int((y == 0).sum()), 1: int((y == 1).sum())}
    if min(counts.values()) == 0:
        only = 1 if counts[1] else 0
        raise LabelError(
            f"all {len(rows)} labelled studies are {only} for {labels.pathology!r}: a model "
            "needs both positive and negative studies"
        )
    if min(counts.values()) < min_per_class:
        raise LabelError(
            f"{counts[1]} positive and {counts[0]} negative studies for {labels.pathology!r}: "
            f"cross-validation needs at least {min_per_class} of each (one per fold, two "
            "in every training part)"
        )
    return Cohort(
        x=table.values[list(rows)],
        y=y,
        rows=rows,
        unlabelled_rows=len(table) - len(rows),
        unknown_label_lines=tuple(unknown),
    )
