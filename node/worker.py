"""The job worker: claim a queued series, run the pipeline, record the result and queue its
delivery, all or nothing.

A job is for one series, but selection is by study: the pipeline sees every complete series
of the study and analyses the job's series only if selection picks it (otherwise the series
ends NOT_SELECTED, naming the series preferred). So that it sees the whole study, a job waits
while another series of its study is still receiving.

A job is claimed in one transaction (job ``running``, series ``PROCESSING``, only if the
series still has the revision the job was made for). The pipeline writes its objects into a
private folder; they are moved under ``results/`` and, in one transaction, the result row,
the job, the series state (REPORTED or INVALID with the reason) and one outbox row per object
per destination are committed. A series that changed while it was analysed keeps its new
state: its stale result is recorded as superseded and nothing is sent. A crash at any point
leaves the job to be claimed again after start-up recovery; output UIDs are deterministic,
so a re-run produces the same objects. A stop request is honoured between the pipeline's
stages: the job goes back to the queue and runs again at the next start.
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

from node.index import Index, SeriesState, utc_now
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
    short report saying why, when the site wants one. ``not_selected`` set means another
    series of the study is the better one to analyse.
    """

    result: dict[str, Any]
    objects: tuple[OutputObject, ...] = ()
    invalid_reason: str | None = None
    not_selected: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Interrupted(Exception):
    """The node is stopping: the pipeline gave up between two stages."""


@dataclass(frozen=True)
class AnalysisRequest:
    """One job's input: the series to analyse and every instance of its study's complete
    series (for selection), and the reports (``*.sr.dcm``) earlier jobs made for the series,
    which a new report supersedes. ``checkpoint`` is called between stages and raises
    ``Interrupted`` when the node is stopping."""

    series_uid: str
    files: tuple[Path, ...]
    stopping: Callable[[], bool] = lambda: False
    previous_reports: tuple[Path, ...] = ()

    def checkpoint(self, stage: str) -> None:
        if self.stopping():
            raise Interrupted(f"stopped before {stage}")


class Pipeline(Protocol):
    def __call__(self, request: AnalysisRequest, out_dir: Path) -> PipelineResult: ...


@dataclass(frozen=True)
class Job:
    id: int
    series_uid: str
    study_uid: str
    revision: int
    deliver: bool = True


def result_folder(results_root: Path, series_uid: str, job_id: int) -> Path:
    """Where a job's output objects live (named by hashes and the job id only)."""
    return results_root / name_hash(series_uid)[:16] / str(job_id)


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
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.index = index
        self.store_root = store_root
        self.results_root = results_root
        self.pipeline = pipeline
        self.destinations = destinations
        self.clock = clock
        self.stopping = stopping

    def claim(self) -> Job | None:
        with self.index.transaction() as conn:
            row = conn.execute(
                "SELECT id, series_uid, study_uid, revision, deliver FROM jobs j "
                "WHERE state = 'queued' "
                "AND NOT EXISTS (SELECT 1 FROM series s WHERE s.study_uid = j.study_uid "
                "AND s.state = 'RECEIVING') ORDER BY id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            job = Job(row[0], row[1], row[2], row[3], bool(row[4]))
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
        files = tuple(
            self.store_root / r["path"]
            for r in self.index.query(
                "SELECT i.path FROM instances i JOIN series s ON s.series_uid = i.series_uid "
                "WHERE s.study_uid = ? AND (s.state != 'RECEIVING' OR s.series_uid = ?) "
                "ORDER BY i.series_uid, i.instance_number, i.path",
                (job.study_uid, job.series_uid),
            )
        )
        staging = self.results_root / ".staging" / str(job.id)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        started = time.perf_counter()
        try:
            request = AnalysisRequest(
                job.series_uid, files, self.stopping, self._previous_reports(job)
            )
            result = self.pipeline(request, staging)
        except Interrupted as exc:
            log.info("%s: job queued again", exc, extra={"cid": cid})
            self.index.requeue(job.id, job.series_uid, job.revision)
            shutil.rmtree(staging, ignore_errors=True)
            return False
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
        final = result_folder(self.results_root, job.series_uid, job.id)
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
        if result.invalid_reason:
            state, reason = SeriesState.INVALID, result.invalid_reason
        elif result.not_selected:
            state, reason = SeriesState.NOT_SELECTED, result.not_selected
        else:
            state, reason = SeriesState.REPORTED, ""
        self._finish(job, state, reason, result.result, objects, timings)
        log.info(
            "series %s %s in %.1f s, %d objects",
            uid_hash(job.series_uid),
            state,
            timings["total"],
            len(objects),
            extra={"cid": cid},
        )
        return True

    def _previous_reports(self, job: Job) -> tuple[Path, ...]:
        """SR files of this series' earlier jobs that ended REPORTED (sent or not)."""
        rows = self.index.query(
            "SELECT job_id FROM results WHERE series_uid = ? AND job_id < ? "
            "AND state = 'REPORTED' ORDER BY job_id",
            (job.series_uid, job.id),
        )
        return tuple(
            path
            for r in rows
            for path in sorted(
                result_folder(self.results_root, job.series_uid, r["job_id"]).glob("*.sr.dcm")
            )
        )

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
            if objects and job.deliver:
                enqueue(
                    conn,
                    job.id,
                    job.series_uid,
                    objects,
                    self.destinations(job.series_uid),
                    self.clock(),
                )


def run_forever(worker: Worker, stop: threading.Event, poll: float = 1.0) -> None:
    """Work until ``stop`` is set; checked between jobs, and between a job's stages when the
    worker was made with ``stopping=stop.is_set``."""
    while not stop.is_set():
        try:
            busy = worker.run_once()
        except Exception:
            log.exception("worker error; continuing")
            busy = False
        if not busy:
            stop.wait(poll)
