"""The job worker: claim a queued series, run the pipeline, record the result and queue its
delivery, all or nothing.

A job is claimed in one transaction (job ``running``, series ``PROCESSING``, only if the
series still has the revision the job was made for). The pipeline writes its objects into a
private folder; they are moved under ``results/`` and, in one transaction, the result row,
the job, the series state (REPORTED or INVALID with the reason) and one outbox row per object
per destination are committed. A series that changed while it was analysed keeps its new
state: its stale result is recorded as superseded and nothing is sent. A crash at any point
leaves the job to be claimed again after start-up recovery; output UIDs are deterministic,
so a re-run produces the same objects.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from node.index import Index, utc_now
from node.outbox import ResultObject, enqueue
from scp.uids import name_hash, uid_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputObject:
    """A DICOM object the pipeline wrote: ``kind`` is ``sr`` or ``sc``."""

    kind: str
    sop_instance_uid: str
    path: Path


@dataclass(frozen=True)
class PipelineResult:
    """What analysing one series produced.

    ``invalid_reason`` set means the series cannot be analysed (not a chest CT, too few
    slices, ...): the series becomes INVALID with that reason; ``objects`` may still hold a
    short report saying why, when the site wants one.
    """

    result: dict[str, Any]
    objects: tuple[OutputObject, ...] = ()
    invalid_reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Pipeline(Protocol):
    def __call__(self, files: Sequence[Path], out_dir: Path) -> PipelineResult: ...


@dataclass(frozen=True)
class Job:
    id: int
    series_uid: str
    study_uid: str
    revision: int


class Worker:
    """Runs jobs one at a time; several workers may share an index."""

    def __init__(
        self,
        index: Index,
        store_root: Path,
        results_root: Path,
        pipeline: Pipeline,
        destinations: Callable[[str], Sequence[str]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.store_root = store_root
        self.results_root = results_root
        self.pipeline = pipeline
        self.destinations = destinations
        self.clock = clock

    def claim(self) -> Job | None:
        with self.index.transaction() as conn:
            row = conn.execute(
                "SELECT id, series_uid, study_uid, revision FROM jobs WHERE state = 'queued' "
                "ORDER BY id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            job = Job(row[0], row[1], row[2], row[3])
            claimed = conn.execute(
                "UPDATE series SET state = 'PROCESSING', state_changed = ? "
                "WHERE series_uid = ? AND revision = ? AND state = 'STABLE'",
                (utc_now(), job.series_uid, job.revision),
            ).rowcount
            state = "running" if claimed else "superseded"
            conn.execute(
                "UPDATE jobs SET state = ?, updated = ? WHERE id = ?", (state, utc_now(), job.id)
            )
        return job if claimed else self.claim()

    def run_once(self) -> bool:
        """Run one queued job; False when there was none."""
        job = self.claim()
        if job is None:
            return False
        cid = f"job{job.id}"
        log.info(
            "analysing series %s (revision %d)",
            uid_hash(job.series_uid),
            job.revision,
            extra={"cid": cid},
        )
        files = [
            self.store_root / r["path"]
            for r in self.index.query(
                "SELECT path FROM instances WHERE series_uid = ? ORDER BY instance_number, path",
                (job.series_uid,),
            )
        ]
        staging = self.results_root / ".staging" / str(job.id)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        started = time.perf_counter()
        try:
            result = self.pipeline(files, staging)
        except Exception as exc:
            log.exception("analysis failed", extra={"cid": cid})
            self._finish(
                job,
                "FAILED",
                f"{type(exc).__name__}: {exc}",
                {"error": traceback.format_exception_only(exc)[-1].strip()},
                (),
                {},
            )
            shutil.rmtree(staging, ignore_errors=True)
            return True
        timings = {**result.timings, "total": time.perf_counter() - started}
        final = self.results_root / name_hash(job.series_uid)[:16] / str(job.id)
        objects = []
        if result.objects:
            final.mkdir(parents=True, exist_ok=True)
            for obj in result.objects:
                target = final / obj.path.name
                obj.path.replace(target)
                objects.append(
                    ResultObject(
                        obj.kind, obj.sop_instance_uid, str(target.relative_to(self.results_root))
                    )
                )
        shutil.rmtree(staging, ignore_errors=True)
        state = "INVALID" if result.invalid_reason else "REPORTED"
        self._finish(job, state, result.invalid_reason or "", result.result, objects, timings)
        log.info(
            "series %s %s in %.1f s, %d objects",
            uid_hash(job.series_uid),
            state,
            timings["total"],
            len(objects),
            extra={"cid": cid},
        )
        return True

    def _finish(
        self,
        job: Job,
        state: str,
        reason: str,
        result: dict[str, Any],
        objects: Sequence[ResultObject],
        timings: dict[str, float],
    ) -> None:
        now = utc_now()
        with self.index.transaction() as conn:
            current = conn.execute(
                "SELECT 1 FROM series WHERE series_uid = ? AND revision = ? "
                "AND state = 'PROCESSING'",
                (job.series_uid, job.revision),
            ).fetchone()
            job_state = "done" if current else "superseded"
            conn.execute(
                "INSERT OR REPLACE INTO results (job_id, series_uid, study_uid, state, reason, "
                "result_json, timings_json, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.series_uid,
                    job.study_uid,
                    state if current else "SUPERSEDED",
                    reason,
                    json.dumps(result),
                    json.dumps(timings),
                    now,
                ),
            )
            conn.execute(
                "UPDATE jobs SET state = ?, reason = ?, updated = ? WHERE id = ?",
                (job_state, reason, now, job.id),
            )
            if not current:
                return
            conn.execute(
                "UPDATE series SET state = ?, reason = ?, state_changed = ? WHERE series_uid = ?",
                (state, reason, now, job.series_uid),
            )
            if objects:
                enqueue(
                    conn,
                    job.id,
                    job.series_uid,
                    objects,
                    self.destinations(job.series_uid),
                    self.clock(),
                )


def run_forever(worker: Worker, stop: threading.Event, poll: float = 1.0) -> None:
    """Work until ``stop`` is set; checked between jobs, never inside one."""
    while not stop.is_set():
        try:
            busy = worker.run_once()
        except Exception:
            log.exception("worker error; continuing")
            busy = False
        if not busy:
            stop.wait(poll)
