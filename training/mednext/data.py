"""Studies -> MedNeXt training inputs, by the analyzer's own steps: intake, series selection
and loading (``inference.prepare``, as ``ctnode features`` and the node), the node's lung
segmentation (``inference.quant.segmentation``: the mask ``Segmented.lungs`` is in the node)
and ``inference.mednext.preprocess``. Each input is cached as ``.npy`` in the work folder,
named by a hash of its series, instances and the card's preprocessing (never by a DICOM
value), so a resumed or repeated training prepares nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm  # type: ignore[import-untyped]

from config import Settings
from inference.errors import IntakeError, InvalidSeries
from inference.mednext.card import Preprocessing
from inference.mednext.preprocess import NoLungs, preprocess
from inference.mednext.results import CODE_VERSION
from inference.prepare import prepare
from inference.quant.segmentation import segment
from inference.volume import Volume
from training.labels import LabelError, normalise_id
from training.mednext.labels import MultiLabels


@dataclass(frozen=True)
class Prepared:
    """One study's input file and the identifiers a label may name it by (study UID,
    series UID, the input's name)."""

    keys: tuple[str, ...]
    file: Path


@dataclass(frozen=True)
class Skipped:
    """An input that gave no study to train on, with the node's reason code."""

    source: str
    code: str
    reason: str


def input_of(volume: Volume, pre: Preprocessing) -> npt.NDArray[np.float32]:
    """The model input of ``volume`` as the node makes it: its lungs segmented, then
    preprocessed by the card."""
    lungs = segment(volume).lungs
    return preprocess(volume.voxels, volume.spacing, lungs, pre).numpy()


def _key(volume: Volume, pre: Preprocessing) -> str:
    instances = sorted(s.sop_instance_uid for s in volume.slices)
    text = json.dumps([volume.series_uid, instances, asdict(pre), CODE_VERSION])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def prepare_inputs(
    paths: Sequence[Path],
    settings: Settings,
    pre: Preprocessing,
    cache: Path,
    *,
    progress: bool = True,
) -> tuple[list[Prepared], list[Skipped]]:
    """Every study under ``paths`` (folders, ZIPs, DICOMDIRs, files) as a cached input."""
    cache.mkdir(parents=True, exist_ok=True)
    prepared: list[Prepared] = []
    skipped: list[Skipped] = []
    for path in tqdm(paths, desc="preparing studies", unit="input", disable=not progress):
        try:
            plans = prepare(path, settings)
        except (IntakeError, InvalidSeries) as exc:
            skipped.append(Skipped(path.name, exc.code, exc.message))
            continue
        for plan in plans:
            volume = plan.volume
            if volume is None:
                skipped.append(Skipped(path.name, plan.reason_code or "", plan.reason or ""))
                continue
            file = cache / f"{_key(volume, pre)}.npy"
            if not file.is_file():
                try:
                    x = input_of(volume, pre)
                except NoLungs as exc:
                    skipped.append(Skipped(path.name, exc.reason, str(exc)))
                    continue
                tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp.npy")
                np.save(tmp, x)
                os.replace(tmp, file)
            keys = (plan.study_uid, volume.series_uid, normalise_id(path.name))
            prepared.append(Prepared(tuple(k for k in keys if k), file))
    return prepared, skipped


def match(
    prepared: Sequence[Prepared], labels: MultiLabels, *, ignore_unknown: bool = False
) -> tuple[list[Path], npt.NDArray[np.int_]]:
    """The labelled inputs and their targets (one row per labelled study, label order).
    Labels naming no study are an error unless ``ignore_unknown``; messages give CSV lines."""
    index: dict[str, int] = {}
    for i, item in enumerate(prepared):
        for key in item.keys:
            index.setdefault(key, i)
    rows: dict[int, int] = {}
    unknown: list[int] = []
    for r, (identifier, line) in enumerate(zip(labels.ids, labels.lines, strict=True)):
        found = index.get(identifier)
        if found is None:
            unknown.append(line)
            continue
        earlier = rows.get(found)
        if earlier is not None and not np.array_equal(labels.y[earlier], labels.y[r]):
            raise LabelError(
                f"lines {labels.lines[earlier]} and {line} give the same study different labels"
            )
        rows[found] = r
    if unknown and not ignore_unknown:
        shown = ", ".join(str(n) for n in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise LabelError(
            f"{len(unknown)} of {len(labels.ids)} labels name studies that were not prepared "
            f"(lines {shown}): add the studies, fix the identifiers, or pass "
            "--ignore-unknown-labels"
        )
    if len(rows) < 2:
        raise LabelError("fewer than 2 labelled studies: nothing to train and validate on")
    chosen = sorted(rows)
    return [prepared[i].file for i in chosen], labels.y[[rows[i] for i in chosen]]
