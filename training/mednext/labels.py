"""Multilabel targets for MedNeXt training, from the files ``ctnode fusion train`` reads.

A CT-RATE label file (``VolumeName`` and the 18 abnormality columns) or a site's
``study_uid,<label>,<label>...`` file: every column other than the identifier is a label
unless ``labels`` names the ones to learn (in the order the head will have). Values are 0 or
1 (``training.labels`` decides what counts as either); identifiers match studies as there
(study UID, series UID or the input's name without suffix). Messages name CSV lines, never
identifiers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from training.labels import (
    ID_COLUMNS,
    LabelError,
    binary_label,
    id_column_of,
    normalise_id,
    read_table,
)


@dataclass(frozen=True)
class MultiLabels:
    """0/1 targets by identifier: ``y[i, j]`` is label ``labels[j]`` of ``ids[i]``."""

    labels: tuple[str, ...]
    id_column: str
    ids: tuple[str, ...]
    y: npt.NDArray[np.int_]
    lines: tuple[int, ...]


def read_multilabels(
    path: Path, labels: Sequence[str] | None = None, id_column: str | None = None
) -> MultiLabels:
    """Read the CSV; ``LabelError`` names the missing column or the wrong line."""
    header, records = read_table(path)
    column = id_column_of(header, id_column, path.name)
    if labels:
        missing = [lb for lb in labels if lb not in header]
        if missing:
            raise LabelError(
                f"{path.name} has no column for {', '.join(repr(m) for m in missing)} "
                f"(columns: {', '.join(header[:30])})"
            )
        chosen = tuple(labels)
    else:
        chosen = tuple(h for h in header if h != column and h not in ID_COLUMNS)
    if not chosen:
        raise LabelError(f"{path.name} has no label column besides {column!r}")
    ids, rows, lines = [], [], []
    for line, row in records:
        row = {(k or "").strip(): v for k, v in row.items()}
        identifier = normalise_id(row.get(column) or "")
        if not identifier:
            raise LabelError(f"{path.name} line {line}: empty {column!r}")
        ids.append(identifier)
        rows.append([binary_label(row.get(lb), lb, line, path.name) for lb in chosen])
        lines.append(line)
    if not ids:
        raise LabelError(f"{path.name} has a header but no labels")
    return MultiLabels(chosen, column, tuple(ids), np.array(rows, dtype=np.int_), tuple(lines))
