"""``POST /predict``: a ZIP of DICOM files enters the node the way a C-STORE does, and the
legacy JSON comes back.

Every file of the archive goes through the storage SCP's own ``store`` (the same checks,
the same durable spool and index rows, the same dataset bytes behind a file meta header the
node writes), with the calling AE ``HTTP``. The upload's series are then complete by
definition, so they are marked stable at once, and the node's worker analyses them like any
other: selection over the study, analysis, reporting, results in the database. Results go
to the destinations only when the request asks (``send``). The request waits for its series
to reach an end state; past ``api.predict_timeout`` it answers with the jobs to poll.

Bad input is a 4xx with the legacy failure JSON and a reason code, never a 500.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from config import Settings
from inference.errors import IntakeError
from inference.intake import open_input
from node.index import Index
from reporting import legacy_json
from scp import upper_layer as ul
from scp.server import StorageSCP
from scp.sop_classes import is_ct
from scp.uids import uid_hash
from scp.validation import SUCCESS

log = logging.getLogger(__name__)

CALLING_AE = "HTTP"
END_STATES = ("REPORTED", "SENT", "INVALID", "FAILED", "NOT_SELECTED")
# Intake reason codes that mean "too big" rather than "malformed".
TOO_LARGE = ("too_large", "zip_bomb", "too_many_files")


class PredictError(Exception):
    """A request the node cannot analyse: the HTTP status, a reason code and a sentence."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Submission:
    """What one upload put into the node: its studies, series and their jobs."""

    study_uids: tuple[str, ...]
    series_uids: tuple[str, ...]
    job_ids: tuple[int, ...]
    started: float


class Predictor:
    def __init__(self, settings: Settings, index: Index, scp: StorageSCP, workers: int) -> None:
        self.settings = settings
        self.index = index
        self.scp = scp
        self.workers = workers
        self.uploads = settings.storage.root / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        for stale in self.uploads.iterdir():  # uploads a crash interrupted: never answered
            stale.unlink(missing_ok=True)

    def ingest(self, archive: Path, *, deliver: bool) -> Submission:
        """Store the archive's instances and queue their series; raises ``PredictError``."""
        started = time.perf_counter()
        if not zipfile.is_zipfile(archive):
            raise PredictError(400, "not_zip", "the upload is not a ZIP archive")
        stored: dict[str, str] = {}  # series UID -> study UID
        refused: dict[str, int] = {}
        other = 0
        try:
            with open_input(archive, self.settings.intake) as intake:
                for number, path in enumerate(intake.files):
                    outcome = self._store(path, f"http{number}")
                    if isinstance(outcome, tuple):
                        stored[outcome[0]] = outcome[1]
                    elif outcome == "not_ct":
                        other += 1
                    else:
                        refused[outcome] = refused.get(outcome, 0) + 1
        except IntakeError as exc:
            status = 413 if exc.code in TOO_LARGE else 400 if exc.code != "no_dicom" else 422
            raise PredictError(status, exc.code, str(exc).split(": ", 1)[-1]) from exc
        if not stored:
            if refused:
                reasons = ", ".join(f"{n} {code}" for code, n in sorted(refused.items()))
                raise PredictError(422, "rejected", f"every CT instance was rejected ({reasons})")
            raise PredictError(422, "no_ct", f"no CT images in the archive ({other} other objects)")
        jobs = [self._queue(series_uid, deliver) for series_uid in sorted(stored)]
        log.info(
            "upload: %d series of %d studies queued (%d not CT, %d rejected)",
            len(stored),
            len(set(stored.values())),
            other,
            sum(refused.values()),
        )
        return Submission(
            tuple(sorted(set(stored.values()))), tuple(sorted(stored)), tuple(jobs), started
        )

    def outcome(self, submission: Submission, timeout: float) -> tuple[int, dict[str, Any]]:
        """Wait up to ``timeout`` s for the upload's series to end; the status and JSON."""
        deadline = time.monotonic() + timeout
        while self.workers > 0 and time.monotonic() < deadline:
            if self._finished(submission):
                break
            time.sleep(0.2)
        if not self._finished(submission):
            return 202, pending(submission.study_uids[0], submission.job_ids)
        answers = [self.answer(uid, submission.started) for uid in submission.study_uids]
        status, body = answers[0]
        if len(answers) > 1:
            body = {**body, "studies": [answer for _, answer in answers]}
        return status, body

    def _store(self, path: Path, cid: str) -> tuple[str, str] | str:
        """One file through the SCP's store: (series UID, study UID) when stored, else the
        reason it was not ("not_ct" when discarded by policy)."""
        try:
            header = dcmread(
                path,
                force=True,
                stop_before_pixels=True,
                specific_tags=["SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"],
            )
            sop_class = str(header.SOPClassUID)
            sop_instance = str(header.SOPInstanceUID)
            offset, syntax = _dataset_start(path, header)
        except (InvalidDicomError, AttributeError, KeyError, ValueError, OSError, EOFError):
            return "undecodable"
        if not is_ct(sop_class):
            self.scp.store(path, sop_class, sop_instance, CALLING_AE, syntax, cid)
            return "not_ct"
        fd, name = tempfile.mkstemp(dir=self.scp.spool.tmp_dir, suffix=".part")
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as source:
                out.write(ul.file_meta(sop_class, sop_instance, syntax, CALLING_AE))
                source.seek(offset)
                while chunk := source.read(1 << 20):
                    out.write(chunk)
            status = self.scp.store(temp, sop_class, sop_instance, CALLING_AE, syntax, cid)
        finally:
            temp.unlink(missing_ok=True)
        if status != SUCCESS:
            return self.scp.last_rejection() or f"status_{status:04x}"
        row = self.index.query(
            "SELECT s.series_uid, s.study_uid FROM instances i JOIN series s "
            "ON s.series_uid = i.series_uid WHERE i.sop_instance_uid = ?",
            (sop_instance,),
        )
        return (row[0]["series_uid"], row[0]["study_uid"]) if row else "not_indexed"

    def _queue(self, series_uid: str, deliver: bool) -> int:
        """The series is complete: queue its job now (or take the one the assembler or an
        earlier upload queued) with this request's delivery choice."""
        (series,) = self.index.query(
            "SELECT state, revision FROM series WHERE series_uid = ?", (series_uid,)
        )
        if series["state"] == "RECEIVING":
            job = self.index.mark_stable(series_uid, series["revision"], deliver=deliver)
            if job is not None:
                return job
        self.index.set_delivery(series_uid, deliver)
        latest = self.index.query(
            "SELECT id FROM jobs WHERE series_uid = ? ORDER BY id DESC LIMIT 1", (series_uid,)
        )
        return int(latest[0]["id"])

    def study_result(self, study_uid: str) -> tuple[int, dict[str, Any]] | None:
        """``GET /studies/{uid}/result``: the answer ``POST /predict`` gives, at any time
        (202 while a series of the study is still on its way); None for an unknown study."""
        rows = self.index.query(
            "SELECT series_uid, state FROM series WHERE study_uid = ?", (study_uid,)
        )
        if not rows:
            return None
        if any(r["state"] not in END_STATES for r in rows):
            jobs = self.index.query(
                "SELECT id FROM jobs WHERE study_uid = ? AND state IN ('queued', 'running') "
                "ORDER BY id",
                (study_uid,),
            )
            return 202, pending(study_uid, tuple(j["id"] for j in jobs))
        return self.answer(study_uid, time.perf_counter())

    def _finished(self, submission: Submission) -> bool:
        marks = ",".join("?" * len(submission.series_uids))
        rows = self.index.query(
            f"SELECT state FROM series WHERE series_uid IN ({marks})", submission.series_uids
        )
        return all(r["state"] in END_STATES for r in rows)

    def answer(self, study_uid: str, started: float) -> tuple[int, dict[str, Any]]:
        """The study's newest report; else why none of its series could be analysed."""
        rows = self.index.query(
            "SELECT job_id, series_uid, state, reason, result_json FROM results "
            "WHERE study_uid = ? AND state IN ('REPORTED', 'INVALID', 'FAILED') "
            "ORDER BY state = 'REPORTED' DESC, job_id DESC LIMIT 1",
            (study_uid,),
        )
        seconds = time.perf_counter() - started
        if not rows:
            message = "no series of the study could be analysed"
            return 422, legacy_json.failure(study_uid, "", message, time_of_processing=seconds)
        row = rows[0]
        if row["state"] == "REPORTED":
            log.info("upload: study %s reported (job %d)", uid_hash(study_uid), row["job_id"])
            return 200, {**_json(row["result_json"]), "job_id": row["job_id"]}
        status = 422 if row["state"] == "INVALID" else 500
        body = legacy_json.failure(
            study_uid, row["series_uid"], row["reason"], time_of_processing=seconds
        )
        return status, {**body, "job_id": row["job_id"]}


def pending(study_uid: str, job_ids: tuple[int, ...]) -> dict[str, Any]:
    """The 202 answer: where to poll (the study's result, or one job)."""
    body: dict[str, Any] = {
        "processing_status": "Pending",
        "study_uid": study_uid,
        "job_ids": list(job_ids),
        "result": f"/studies/{study_uid}/result",
    }
    if job_ids:
        body["poll"] = f"/jobs/{job_ids[-1]}"
    return body


def _dataset_start(path: Path, header: Any) -> tuple[int, str]:
    """Where the data set begins in ``path`` and its transfer syntax: after the file meta
    of a Part-10 file; at 0 for a bare data set (implicit or explicit VR little endian)."""
    meta = getattr(header, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        length = meta.get("FileMetaInformationGroupLength")
        if length is None:
            raise ValueError("file meta without a group length")
        return 144 + int(length), str(meta.TransferSyntaxUID)
    with open(path, "rb") as fh:
        if fh.read(132)[128:] == b"DICM":
            raise ValueError("file meta without a transfer syntax")
    implicit = header.original_encoding[0] is not False
    return 0, str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)


def _json(text: str | None) -> dict[str, Any]:
    value = json.loads(text or "{}")
    return value if isinstance(value, dict) else {}
