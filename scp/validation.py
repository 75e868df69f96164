"""Checks on a received instance before it is stored: pure functions, no I/O.

Each failure is a ``Rejection`` carrying the DIMSE status the SCP answers with (PS3.4
Annex B.2.3 and PS3.7 Annex C) and a reason code that goes to the log and the database.
"""

from __future__ import annotations

from dataclasses import dataclass

from scp.header import HeaderValues
from scp.uids import uid_problem

# PS3.4 B.2.3 / PS3.7 C: the statuses the storage SCP uses.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class Rejection:
    """Why an instance is refused: the status for the SCU and a reason for people."""

    status: int
    reason: str
    message: str


@dataclass(frozen=True)
class Identity:
    """The UIDs that place an instance in the hierarchy, taken from its data set."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str


def check_identity(
    dataset: HeaderValues, command_sop_class: str, command_sop_instance: str
) -> Identity | Rejection:
    """The instance's identity, or why it cannot be stored (PS3.4 B.2.3).

    A data set in which neither SOP UID can be found was not decoded at all (0xC000). The
    data set must name the SOP class and instance the C-STORE command names (else
    0xA900), and carry syntactically valid Study, Series and SOP Instance UIDs (missing or
    malformed: 0xA900 for the SOP identity, 0xC000 for the study/series that we cannot
    file the instance under).
    """
    sop_class = _text(dataset, "SOPClassUID")
    sop_instance = _text(dataset, "SOPInstanceUID")
    if sop_class is None and sop_instance is None:
        # pydicom parses almost any bytes into *some* elements; a data set without either
        # SOP Common UID was not understood, whatever the parser made of it.
        return Rejection(
            CANNOT_UNDERSTAND, "undecodable", "no SOP Class or Instance UID could be decoded"
        )
    for name, value in (("SOP Class UID", sop_class), ("SOP Instance UID", sop_instance)):
        problem = uid_problem(value)
        if problem:
            return Rejection(
                DATASET_DOES_NOT_MATCH_SOP_CLASS, "invalid_sop_uid", f"{name} is {problem}"
            )
    if sop_class != command_sop_class:
        return Rejection(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "sop_class_mismatch",
            "SOP Class UID in the data set differs from the C-STORE command",
        )
    if sop_instance != command_sop_instance:
        return Rejection(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "sop_instance_mismatch",
            "SOP Instance UID in the data set differs from the C-STORE command",
        )
    study = _text(dataset, "StudyInstanceUID")
    series = _text(dataset, "SeriesInstanceUID")
    for name, value in (("Study Instance UID", study), ("Series Instance UID", series)):
        problem = uid_problem(value)
        if problem:
            return Rejection(CANNOT_UNDERSTAND, "invalid_hierarchy_uid", f"{name} is {problem}")
    assert sop_class and sop_instance and study and series
    return Identity(sop_class, sop_instance, study, series)


def check_size(size: int, limit: int) -> Rejection | None:
    """An instance larger than the configured limit is refused as out of resources."""
    if size > limit:
        return Rejection(
            OUT_OF_RESOURCES,
            "instance_too_large",
            f"instance of {size} bytes exceeds the limit of {limit} bytes",
        )
    return None


def check_free_space(free: int, watermark: int) -> Rejection | None:
    """Below the free-space watermark nothing more is accepted (0xA700), so the node never
    fills its disk and loses the database."""
    if free < watermark:
        return Rejection(
            OUT_OF_RESOURCES,
            "disk_full",
            f"free space {free // 2**20} MiB is below the watermark of {watermark // 2**20} MiB",
        )
    return None


def _text(dataset: HeaderValues, keyword: str) -> str | None:
    value = dataset.get(keyword)
    if value is None:
        return None
    return str(value).strip("\0 ")
