"""What the instances and series serve: the SCP's sink (``scp.sink``: the duplicate check,
recording stored instances, refusals), the assembler's view of open series, and start-up
recovery's reconciliation of the index with the spool."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from node.index.connection import Connection, Tx, utc_now
from node.index.schema import TABLES
from scp.header import HeaderValues
from scp.sink import ReceivedInstance, Refusal, StoredCopy


@dataclass(frozen=True)
class OpenSeries:
    """A series the assembler watches: its revision changes with every stored instance."""

    series_uid: str
    revision: int
    last_received: float


class InstanceQueries(Connection):
    def stored_copy(self, sop_instance_uid: str) -> StoredCopy | None:
        rows = self.read(
            "SELECT sha256, path FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        )
        return StoredCopy(rows[0]["sha256"], rows[0]["path"]) if rows else None

    def record(self, instance: ReceivedInstance) -> None:
        """Index a stored instance and mark its series as changed, in one transaction."""
        self.record_many([instance])

    def record_many(self, instances: Sequence[ReceivedInstance]) -> None:
        """Index stored instances in one transaction: the SCP's group commit
        (``scp.group_commit``) pays one ``synchronous=FULL`` commit for all of them.

        Idempotent across processes: the same instance stored by two receivers at once is
        one row, counted once (each series' writers are serialised, in series order so that
        two batches cannot wait on each other)."""
        now, epoch = utc_now(), time.time()
        with self.transaction() as conn:
            if self.dialect.key_lock:
                for series_uid in sorted({i.identity.series_uid for i in instances}):
                    conn.execute(self.dialect.key_lock, (series_uid,))
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

    def open_series(self) -> list[OpenSeries]:
        """Series still receiving, for the assembler."""
        rows = self.query(
            "SELECT series_uid, revision, last_received_epoch FROM series WHERE state = 'RECEIVING'"
        )
        return [OpenSeries(r["series_uid"], r["revision"], r["last_received_epoch"]) for r in rows]

    def indexed_paths(self) -> dict[str, tuple[str, str]]:
        """``{relative path: (SOP Instance UID, Series UID)}`` for every indexed instance."""
        rows = self.query("SELECT path, sop_instance_uid, series_uid FROM instances")
        return {r["path"]: (r["sop_instance_uid"], r["series_uid"]) for r in rows}

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


def _insert(conn: Tx, instance: ReceivedInstance, now: str, epoch: float) -> None:
    """The rows of one stored instance; its series counts as changed."""
    ds = instance.header
    ident = instance.identity
    patient_key = _patient_key(ds)
    conn.execute(
        "INSERT INTO patients (patient_key, patient_id, patient_name, birth_date, sex) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(patient_key) DO UPDATE SET "
        "patient_name = excluded.patient_name, birth_date = excluded.birth_date, "
        "sex = excluded.sex WHERE patients.patient_name IS DISTINCT FROM excluded.patient_name "
        "OR patients.birth_date IS DISTINCT FROM excluded.birth_date "
        "OR patients.sex IS DISTINCT FROM excluded.sex",  # else no write
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
    known = conn.execute(
        "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (ident.sop_instance_uid,)
    ).fetchone()
    conn.execute(
        _UPSERT_INSTANCE,
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
        (0 if known else 1, now, epoch, now, ident.series_uid),
    )


_INSTANCE_COLUMNS = tuple(TABLES["instances"].columns)
_UPSERT_INSTANCE = (
    f"INSERT INTO instances ({', '.join(_INSTANCE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_INSTANCE_COLUMNS))}) "
    "ON CONFLICT(sop_instance_uid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _INSTANCE_COLUMNS[1:])
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
