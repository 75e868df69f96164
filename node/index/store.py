"""The node's SQLite index (through sqlite-utils, WAL mode): patients, studies, series,
instances, the analysis job queue, and refused instances.

Writes from many association threads share one connection behind a lock; every write is one
transaction, committed with ``synchronous=FULL`` so an acknowledged instance's row survives
power loss like its file does (the SCP's group commit puts the instances of concurrent
associations in one such transaction). Other processes (``ctnode status``) read concurrently.
"""

from __future__ import annotations

import hashlib
import importlib
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Any

from scp.header import HeaderValues
from scp.sink import ReceivedInstance, Refusal, StoredCopy


def _import_sqlite_utils() -> ModuleType:
    """sqlite-utils without pandas. sqlite-utils imports pandas (and pyarrow with it)
    whenever it is installed, only to type pandas values a caller might insert; the index
    never inserts any, and the training extra installs pandas: every serving process
    carried ~95 MB and 0.5 s of start-up for it. A process that already uses pandas keeps
    sqlite-utils' pandas support."""
    if "pandas" in sys.modules or "sqlite_utils" in sys.modules:
        return importlib.import_module("sqlite_utils")
    sys.modules["pandas"] = None  # type: ignore[assignment]  # import pandas -> ImportError
    try:
        return importlib.import_module("sqlite_utils")
    finally:
        del sys.modules["pandas"]


sqlite_utils = _import_sqlite_utils()


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
class OpenSeries:
    """A series the assembler watches: its revision changes with every stored instance."""

    series_uid: str
    revision: int
    last_received: float


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Index:
    """Read and write access to ``index.sqlite`` in the data directory."""

    def __init__(self, data_dir: Path, *, read_only: bool = False) -> None:
        path = data_dir / DB_NAME
        if read_only:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 10000")
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._reader, self._reader_lock = conn, self._lock
        if not read_only:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._create_schema()
            # The SCP's duplicate check reads here: in WAL mode it sees every committed row
            # without waiting for the write connection's lock (held through each commit).
            self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._reader.row_factory = sqlite3.Row
            self._reader.execute("PRAGMA busy_timeout = 10000")
            self._reader_lock = threading.RLock()

    def close(self) -> None:
        if self._reader is not self.conn:
            self._reader.close()
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, serialised across threads; rolled back on error."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _create_schema(self) -> None:
        db = self.db
        with self._lock:
            db.table("patients").create(
                {
                    "patient_key": str,
                    "patient_id": str,
                    "patient_name": str,
                    "birth_date": str,
                    "sex": str,
                },
                pk="patient_key",
                if_not_exists=True,
            )
            db.table("studies").create(
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
                foreign_keys=[("patient_key", "patients", "patient_key")],
                if_not_exists=True,
            )
            db.table("series").create(
                {
                    "series_uid": str,
                    "study_uid": str,
                    "modality": str,
                    "series_number": int,
                    "description": str,
                    "body_part": str,
                    "state": str,
                    "reason": str,
                    "revision": int,
                    "instance_count": int,
                    "first_received": str,
                    "last_received": str,
                    "last_received_epoch": float,
                    "state_changed": str,
                },
                pk="series_uid",
                foreign_keys=[("study_uid", "studies", "study_uid")],
                if_not_exists=True,
            )
            db.table("instances").create(
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
                    "path": str,
                    "sha256": str,
                    "size": int,
                    "received_at": str,
                    "calling_ae": str,
                },
                pk="sop_instance_uid",
                foreign_keys=[("series_uid", "series", "series_uid")],
                if_not_exists=True,
            )
            db.table("jobs").create(
                {
                    "id": int,
                    "series_uid": str,
                    "study_uid": str,
                    "revision": int,
                    "state": str,
                    "reason": str,
                    "created": str,
                    "updated": str,
                    "deliver": int,
                },
                pk="id",
                defaults={"deliver": 1},
                if_not_exists=True,
            )
            if "deliver" not in db.table("jobs").columns_dict:  # an index from before 0.2
                db.table("jobs").add_column("deliver", int, not_null_default=1)
            db.table("refusals").create(
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
                if_not_exists=True,
            )
            db.table("outbox").create(
                {
                    "id": int,
                    "job_id": int,
                    "series_uid": str,
                    "kind": str,
                    "sop_instance_uid": str,
                    "path": str,
                    "destination": str,
                    "state": str,
                    "attempts": int,
                    "created_epoch": float,
                    "next_attempt_epoch": float,
                    "last_status": int,
                    "reason": str,
                    "updated": str,
                },
                pk="id",
                if_not_exists=True,
            )
            db.table("results").create(
                {
                    "job_id": int,
                    "series_uid": str,
                    "study_uid": str,
                    "state": str,
                    "reason": str,
                    "result_json": str,
                    "timings_json": str,
                    "created": str,
                },
                pk="job_id",
                if_not_exists=True,
            )
            for table, column in (
                ("instances", "series_uid"),
                ("series", "study_uid"),
                ("series", "state"),
                ("jobs", "state"),
                ("outbox", "state"),
                ("results", "series_uid"),
            ):
                db.table(table).create_index([column], if_not_exists=True)

    # -- the SCP's sink -------------------------------------------------------------------

    def stored_copy(self, sop_instance_uid: str) -> StoredCopy | None:
        with self._reader_lock:
            row = self._reader.execute(
                "SELECT sha256, path FROM instances WHERE sop_instance_uid = ?",
                (sop_instance_uid,),
            ).fetchone()
        return StoredCopy(row["sha256"], row["path"]) if row else None

    def record(self, instance: ReceivedInstance) -> None:
        """Index a stored instance and mark its series as changed, in one transaction."""
        self.record_many([instance])

    def record_many(self, instances: Sequence[ReceivedInstance]) -> None:
        """Index stored instances in one transaction: the SCP's group commit
        (``scp.group_commit``) pays one ``synchronous=FULL`` commit for all of them."""
        now, epoch = utc_now(), time.time()
        with self.transaction() as conn:
            for instance in instances:
                _insert(conn, instance, now, epoch)

    def refused(self, refusal: Refusal) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO refusals (at, outcome, status, reason, sop_class_uid, calling_ae) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    utc_now(),
                    refusal.outcome,
                    refusal.status,
                    refusal.reason,
                    refusal.sop_class_uid,
                    refusal.calling_ae,
                ),
            )

    # -- series assembly ------------------------------------------------------------------

    def open_series(self) -> list[OpenSeries]:
        """Series still receiving, for the assembler."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT series_uid, revision, last_received_epoch FROM series "
                "WHERE state = 'RECEIVING'"
            ).fetchall()
        return [OpenSeries(r[0], r[1], r[2]) for r in rows]

    def mark_stable(self, series_uid: str, revision: int, *, deliver: bool = True) -> int | None:
        """Mark a series STABLE and queue an analysis job, unless it changed meanwhile
        (possibly in another process); returns the job id. Older queued jobs for the same
        series are superseded: only the newest revision is worth analysing. ``deliver``
        False keeps the results from the destinations (an HTTP upload that did not ask)."""
        now = utc_now()
        with self.transaction() as conn:
            changed = conn.execute(
                "UPDATE series SET state = 'STABLE', state_changed = ? "
                "WHERE series_uid = ? AND revision = ? AND state = 'RECEIVING'",
                (now, series_uid, revision),
            ).rowcount
            if not changed:
                return None
            conn.execute(
                "UPDATE jobs SET state = 'superseded', updated = ? "
                "WHERE series_uid = ? AND state = 'queued'",
                (now, series_uid),
            )
            cursor = conn.execute(
                "INSERT INTO jobs (series_uid, study_uid, revision, state, reason, created, "
                "updated, deliver) SELECT series_uid, study_uid, revision, 'queued', '', ?, ?, ? "
                "FROM series WHERE series_uid = ?",
                (now, now, int(deliver), series_uid),
            )
            return cursor.lastrowid

    def set_delivery(self, series_uid: str, deliver: bool) -> None:
        """Decide delivery for a series' queued job (one the assembler queued first)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET deliver = ? WHERE series_uid = ? AND state = 'queued'",
                (int(deliver), series_uid),
            )

    # -- start-up -------------------------------------------------------------------------

    def indexed_paths(self) -> dict[str, tuple[str, str]]:
        """``{relative path: (SOP Instance UID, Series UID)}`` for every indexed instance."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT path, sop_instance_uid, series_uid FROM instances"
            ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def forget_instance(self, sop_instance_uid: str, series_uid: str) -> None:
        """Drop an instance whose file is gone; its series counts as changed."""
        now = utc_now()
        with self.transaction() as conn:
            conn.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
            conn.execute(
                "UPDATE series SET revision = revision + 1, instance_count = "
                "(SELECT COUNT(*) FROM instances WHERE series_uid = ?), state = 'RECEIVING', "
                "state_changed = ? WHERE series_uid = ?",
                (series_uid, now, series_uid),
            )

    def requeue(self, job_id: int, series_uid: str, revision: int) -> None:
        """A job stopped between stages goes back to the queue, its series to STABLE (unless
        the series changed meanwhile: then a newer job exists and this one is superseded)."""
        now = utc_now()
        with self.transaction() as conn:
            back = conn.execute(
                "UPDATE series SET state = 'STABLE', state_changed = ? "
                "WHERE series_uid = ? AND revision = ? AND state = 'PROCESSING'",
                (now, series_uid, revision),
            ).rowcount
            conn.execute(
                "UPDATE jobs SET state = ?, updated = ? WHERE id = ?",
                ("queued" if back else "superseded", now, job_id),
            )

    def requeue_interrupted(self) -> int:
        """Jobs a crash interrupted run again: PROCESSING series go back to STABLE."""
        now = utc_now()
        with self.transaction() as conn:
            conn.execute(
                "UPDATE series SET state = 'STABLE', state_changed = ? WHERE state = 'PROCESSING'",
                (now,),
            )
            return conn.execute(
                "UPDATE jobs SET state = 'queued', updated = ? WHERE state = 'running'", (now,)
            ).rowcount

    # -- reading --------------------------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self.conn.execute(sql, params).fetchall()]


def _insert(conn: sqlite3.Connection, instance: ReceivedInstance, now: str, epoch: float) -> None:
    """The rows of one stored instance; its series counts as changed."""
    ds = instance.header
    ident = instance.identity
    patient_key = _patient_key(ds)
    conn.execute(
        "INSERT INTO patients (patient_key, patient_id, patient_name, birth_date, sex) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(patient_key) DO UPDATE SET "
        "patient_name = excluded.patient_name, birth_date = excluded.birth_date, "
        "sex = excluded.sex WHERE patient_name IS NOT excluded.patient_name "
        "OR birth_date IS NOT excluded.birth_date OR sex IS NOT excluded.sex",  # else no write
        (
            patient_key,
            _text(ds, "PatientID"),
            _text(ds, "PatientName"),
            _text(ds, "PatientBirthDate"),
            _text(ds, "PatientSex"),
        ),
    )
    conn.execute(
        "INSERT INTO studies (study_uid, patient_key, study_date, study_time, "
        "accession_number, description, first_received) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(study_uid) DO NOTHING",
        (
            ident.study_uid,
            patient_key,
            _text(ds, "StudyDate"),
            _text(ds, "StudyTime"),
            _text(ds, "AccessionNumber"),
            _text(ds, "StudyDescription"),
            now,
        ),
    )
    conn.execute(
        "INSERT INTO series (series_uid, study_uid, modality, series_number, "
        "description, body_part, state, reason, revision, instance_count, "
        "first_received, last_received, last_received_epoch, state_changed) "
        "VALUES (?, ?, ?, ?, ?, ?, 'RECEIVING', '', 0, 0, ?, ?, ?, ?) "
        "ON CONFLICT(series_uid) DO NOTHING",
        (
            ident.series_uid,
            ident.study_uid,
            _text(ds, "Modality"),
            _int(ds, "SeriesNumber"),
            _text(ds, "SeriesDescription"),
            _text(ds, "BodyPartExamined"),
            now,
            now,
            epoch,
            now,
        ),
    )
    is_new = instance.replaces is None
    conn.execute(
        "INSERT OR REPLACE INTO instances VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            ident.sop_instance_uid,
            ident.series_uid,
            ident.sop_class_uid,
            instance.transfer_syntax,
            _text(ds, "Modality"),
            _multi(ds, "ImageType"),
            _multi(ds, "ConvolutionKernel"),
            _float(ds, "SliceThickness"),
            _multi(ds, "ImagePositionPatient"),
            _multi(ds, "ImageOrientationPatient"),
            _multi(ds, "PixelSpacing"),
            _int(ds, "Rows"),
            _int(ds, "Columns"),
            _int(ds, "NumberOfFrames") or 1,
            _int(ds, "InstanceNumber"),
            instance.relative_path,
            instance.sha256,
            instance.size,
            now,
            instance.calling_ae,
        ),
    )
    conn.execute(
        "UPDATE series SET revision = revision + 1, "
        "instance_count = instance_count + ?, last_received = ?, "
        "last_received_epoch = ?, "
        "state_changed = CASE WHEN state = 'RECEIVING' THEN state_changed ELSE ? END, "
        "state = 'RECEIVING', reason = '' WHERE series_uid = ?",
        (1 if is_new else 0, now, epoch, now, ident.series_uid),
    )


def _patient_key(ds: HeaderValues) -> str:
    """Patients are keyed by a hash of ID and issuer, so the key itself carries no PHI."""
    raw = f"{_text(ds, 'PatientID')}\\{_text(ds, 'IssuerOfPatientID')}"
    return hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:32]


def _text(ds: HeaderValues, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def _multi(ds: HeaderValues, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, str | bytes):
        return str(value)
    try:
        return "\\".join(str(v) for v in value)
    except TypeError:
        return str(value)


def _float(ds: HeaderValues, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _int(ds: HeaderValues, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None
