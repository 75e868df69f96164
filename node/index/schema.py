"""The index's schema: every table, its columns and keys, in one place.

``patients`` -> ``studies`` -> ``series`` -> ``instances`` is what the SCP received
(``instances`` and ``series`` also carry the assembler's revision and the series life
cycle, ``SeriesState``); ``refusals`` what it refused. ``jobs`` is the analysis queue
(queued -> running -> done | superseded), ``results`` one row per finished job (the legacy
JSON and timings), ``outbox`` one row per result object per destination (PENDING -> DONE |
FAILED); ``nodes`` one row per serving process (role, heartbeat). Jobs and outbox rows carry
the lease of the process working on them. Columns a header may lack are NULL. UIDs are
stored in full; patients are keyed by a hash (``instances._patient_key``), so no key carries
PHI. On PostgreSQL the same tables come from ``node/index/migrations/*.sql``
(tests/test_postgres_index.py checks that the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

DB_NAME = "index.sqlite"


class SeriesState(StrEnum):
    """The series life cycle (DESIGN.md): RECEIVING -> STABLE -> PROCESSING -> REPORTED
    -> SENT, with INVALID, NOT_SELECTED (a better series of the study is analysed) and
    FAILED as ends."""

    RECEIVING = "RECEIVING"
    STABLE = "STABLE"
    PROCESSING = "PROCESSING"
    REPORTED = "REPORTED"
    SENT = "SENT"
    INVALID = "INVALID"
    NOT_SELECTED = "NOT_SELECTED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Table:
    """One table: columns in order (``str`` TEXT, ``int`` INTEGER, ``float`` FLOAT), the
    primary key, foreign keys as (column, table, column), column defaults."""

    columns: dict[str, type]
    pk: str
    foreign_keys: tuple[tuple[str, str, str], ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)


TABLES: dict[str, Table] = {
    "patients": Table(
        {
            "patient_key": str,
            "patient_id": str,
            "patient_name": str,
            "birth_date": str,
            "sex": str,
        },
        pk="patient_key",
    ),
    "studies": Table(
        {
            "study_uid": str,
            "patient_key": str,
            "study_date": str,
            "study_time": str,
            "accession_number": str,
            "description": str,
            "first_received": str,
        },
        pk="study_uid",
        foreign_keys=(("patient_key", "patients", "patient_key"),),
    ),
    "series": Table(
        {
            "series_uid": str,
            "study_uid": str,
            "modality": str,
            "series_number": int,
            "description": str,
            "body_part": str,
            "state": str,  # SeriesState
            "reason": str,  # why INVALID, NOT_SELECTED or FAILED
            "revision": int,  # counts every change: the assembler's "still arriving" test
            "instance_count": int,
            "first_received": str,
            "last_received": str,
            "last_received_epoch": float,
            "state_changed": str,
        },
        pk="series_uid",
        foreign_keys=(("study_uid", "studies", "study_uid"),),
    ),
    "instances": Table(
        {
            "sop_instance_uid": str,
            "series_uid": str,
            "sop_class_uid": str,
            "transfer_syntax": str,
            "modality": str,
            "image_type": str,
            "convolution_kernel": str,
            "slice_thickness": float,
            "image_position": str,
            "image_orientation": str,
            "pixel_spacing": str,
            "rows": int,
            "columns": int,
            "number_of_frames": int,
            "instance_number": int,
            "path": str,  # under the spool's store
            "sha256": str,
            "size": int,
            "received_at": str,
            "calling_ae": str,
        },
        pk="sop_instance_uid",
        foreign_keys=(("series_uid", "series", "series_uid"),),
    ),
    "jobs": Table(
        {
            "id": int,
            "series_uid": str,
            "study_uid": str,
            "revision": int,  # the series revision the job was made for
            "state": str,  # queued, running, done, superseded
            "reason": str,
            "created": str,
            "updated": str,
            "deliver": int,  # 0: results stay on the node (an upload that did not ask)
            "owner": str,  # the node id of the process running it
            "lease_until": float,  # epoch seconds (the database's clock) its claim ends
            "claims": int,  # counts claims: a result is committed only by the latest
            "task_id": int,  # PostgreSQL: the procrastinate job carrying it (node.queue)
        },
        pk="id",
        defaults={"deliver": 1, "claims": 0},
    ),
    "refusals": Table(
        {
            "id": int,
            "at": str,
            "outcome": str,
            "status": int,
            "reason": str,
            "sop_class_uid": str,
            "calling_ae": str,
        },
        pk="id",
    ),
    "outbox": Table(
        {
            "id": int,
            "job_id": int,
            "series_uid": str,
            "kind": str,  # sr, sc
            "sop_instance_uid": str,
            "path": str,  # under results/
            "destination": str,
            "state": str,  # PENDING, DONE, FAILED
            "attempts": int,
            "created_epoch": float,
            "next_attempt_epoch": float,
            "last_status": int,
            "reason": str,
            "updated": str,
            "owner": str,  # the node id of the sender sending it now
            "lease_until": float,
        },
        pk="id",
    ),
    "nodes": Table(
        {
            "node_id": str,
            "role": str,  # receiver, worker, sender, api, all
            "host": str,
            "pid": int,
            "version": str,
            "started_epoch": float,
            "heartbeat_epoch": float,
            "state": str,  # running, stopped
        },
        pk="node_id",
    ),
    "results": Table(
        {
            "job_id": int,
            "series_uid": str,
            "study_uid": str,
            "state": str,  # the series state the job ended in, or SUPERSEDED
            "reason": str,
            "result_json": str,
            "timings_json": str,
            "created": str,
        },
        pk="job_id",
    ),
}

INDEXES: tuple[tuple[str, str], ...] = (
    ("instances", "series_uid"),
    ("series", "study_uid"),
    ("series", "state"),
    ("jobs", "state"),
    ("outbox", "state"),
    ("results", "series_uid"),
)


def create(db: Any) -> None:
    """Create what is missing in the ``sqlite_utils.Database`` ``db``; an index from an
    earlier version gets the columns added since (``jobs.deliver``, the leases)."""
    for name, table in TABLES.items():
        db.table(name).create(
            table.columns,
            pk=table.pk,
            foreign_keys=list(table.foreign_keys) or None,
            defaults=table.defaults or None,
            if_not_exists=True,
        )
        existing = db.table(name).columns_dict
        for column, kind in table.columns.items():
            if column not in existing:
                default = table.defaults.get(column)
                db.table(name).add_column(column, kind, not_null_default=default)
    for table_name, column in INDEXES:
        db.table(table_name).create_index([column], if_not_exists=True)
