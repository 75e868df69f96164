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

With several processes on SQLite a claim is a lease that the process's heartbeat renews
(``node.index.jobs``); over PostgreSQL (``ctnode serve --role worker`` on several hosts)
procrastinate hands out the jobs and its workers' heartbeats tell who is alive
(``node.queue``, which calls ``Worker.run`` for a job it claimed). Either way a worker that
stops beating (killed, hung, cut off from the database) loses the job to another worker,
gives up at its next stage if it is still alive, and its late result is refused at commit.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from node.index import Index, SeriesState
from node.index.deliveries import ResultObject
from node.index.jobs import Job
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
        return self.index.claim_job()

    def run_once(self) -> bool:
        """Run one queued job; False when there was none or it was stopped between stages."""
        job = self.claim()
        return job is not None and self.run(job)

    def run(self, job: Job) -> bool:
        """Analyse a claimed job and commit its outcome; False when it was stopped between
        stages (this process stops, or its claim was lost) and went back to the queue."""
        cid = f"job{job.id}"
        log.info(
            "analysing series %s (revision %d)",
            uid_hash(job.series_uid),
            job.revision,
            extra={"cid": cid},
        )
        files = tuple(self.store_root / path for path in self.index.study_files(job))
        staging = self.results_root / ".staging" / f"{job.id}-{job.claim}"
        for earlier in staging.parent.glob(f"{job.id}-*"):
            shutil.rmtree(earlier, ignore_errors=True)  # left by a claim that died or lapsed
        staging.mkdir(parents=True)
        started = time.perf_counter()
        try:
            request = AnalysisRequest(
                job.series_uid,
                files,
                lambda: self.stopping() or not self.index.holds(job),
                self._previous_reports(job),
            )
            result = self.pipeline(request, staging)
        except Interrupted as exc:
            log.info("%s: job queued again", exc, extra={"cid": cid})
            self.index.requeue(job)
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
        return tuple(
            path
            for job_id in self.index.reported_jobs(job)
            for path in sorted(
                result_folder(self.results_root, job.series_uid, job_id).glob("*.sr.dcm")
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
        self.index.finish_job(
            job,
            state,
            reason,
            result,
            timings,
            objects,
            lambda: self.destinations(job.series_uid),
            self.clock(),
        )


def run_forever(worker: Worker, stop: threading.Event, poll: float = 1.0) -> None:
    """Work until ``stop`` is set; checked between jobs, and between a job's stages when the
    worker was made with ``stopping=stop.is_set``. An idle worker looks again after ``poll``
    seconds (or stops at once when ``stop`` is set meanwhile)."""
    while not stop.is_set():
        try:
            busy = worker.run_once()
        except Exception:
            log.exception("worker error; continuing")
            busy = False
        if not busy:
            stop.wait(poll)
