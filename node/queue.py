"""The analysis queue over PostgreSQL: procrastinate.

With ``[database] url`` several processes on several hosts share one index, and the job
queue is procrastinate's, in the same database: ``SKIP LOCKED`` claims, LISTEN/NOTIFY, a
heartbeat per worker, periodic tasks deferred once however many hosts defer them, locks by
key. The index's ``jobs`` table stays the record of each analysis (the series revision it
is for, its state, the process running it, its claim number; results and deliveries point
at it) and names the procrastinate job that carries it (``jobs.task_id``):

- queueing: ``Index.mark_stable`` defers the task on the connection of its own transaction
  (``Deferrer``), so the series' state, the job row and its task commit together;
- claiming: procrastinate hands the task to one worker; the task claims the job row
  (``Index.start_job``: series PROCESSING, claim number plus one) or ends at once when the
  job was superseded or another task carries it. While a series of the study still
  receives, the task runs again ``worker.poll`` seconds later;
- committing: ``Index.finish_job`` writes the result, the job, the series' state and the
  deliveries in one transaction that first checks the claim number, so a worker that lost
  its job commits nothing;
- liveness: procrastinate's worker heartbeat. A periodic task (``recover``) releases the
  jobs of workers whose last beat is older than ``cluster.lease`` and queues their tasks
  again. procrastinate itself would let such a worker, when it comes back, mark the task
  finished or queued again under the worker that took it over: ``FencedJobManager`` ends
  or retries a task only while it is still the worker's that ran it;
- assembly: a periodic task of the receivers, deferred once per tick however many run.

SQLite (one host) keeps the index's own leased queue (``node.index.jobs``). This module
imports procrastinate and psycopg (the ``postgres`` extra): only a node over PostgreSQL
loads it.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
from collections.abc import Callable
from typing import Any, Final

import procrastinate
import psycopg
from procrastinate.job_context import JobContext
from procrastinate.jobs import Job, Status
from procrastinate.manager import JobManager
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from procrastinate.worker import Worker

from node.index import Index
from node.index.jobs import StudyReceiving
from node.worker import Worker as AnalysisWorker
from scp.uids import uid_hash

log = logging.getLogger(__name__)

ANALYSE: Final = "ctnode.analyse"
ANALYSIS_QUEUE: Final = "analysis"
ASSEMBLY_QUEUE: Final = "assembly"
MAINTENANCE_QUEUE: Final = "maintenance"

_STILL_HELD: Final = (
    "SELECT count(*) AS held FROM procrastinate_jobs "
    "WHERE id = %(job_id)s AND status = 'doing' "
    "AND worker_id IS NOT DISTINCT FROM %(worker_id)s"
)


class Wait(Exception):
    """Raised by a task that must run again ``seconds`` later (the same procrastinate job:
    it keeps its id, so the index's job row still names it)."""

    def __init__(self, seconds: float, why: str) -> None:
        super().__init__(why)
        self.seconds = seconds


class _RunAgain(BaseRetryStrategy):
    """A task that raised ``Wait`` is queued again; any other exception ends it."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if not isinstance(exception, Wait):
            return None
        at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=exception.seconds)
        return RetryDecision(retry_at=at)


class FencedJobManager(JobManager):
    """procrastinate's job manager, but a worker ends or retries a task only while the task
    is still ``doing`` under that worker: one that stalled past its heartbeat and came back
    must not touch a task that ``recover`` queued again or another worker now runs."""

    async def finish_job(self, job: Job, status: Status, delete_job: bool) -> None:
        if await self._held(job):
            await super().finish_job(job=job, status=status, delete_job=delete_job)

    async def retry_job(
        self,
        job: Job,
        retry_at: datetime.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        lock: str | None = None,
    ) -> None:
        if await self._held(job):
            await super().retry_job(
                job, retry_at=retry_at, priority=priority, queue=queue, lock=lock
            )

    async def _held(self, job: Job) -> bool:
        row = await self.connector.execute_query_one_async(
            query=_STILL_HELD, job_id=job.id, worker_id=job.worker_id
        )
        if row["held"]:
            return True
        log.warning("queue task %s is no longer this worker's: left as it is", job.id)
        return False


class Deferrer:
    """Defers and cancels analysis tasks on the connection of one of the index's
    transactions (procrastinate's external-connection API: its own pool is never opened)."""

    def __init__(self) -> None:
        self._app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector())

    def defer(self, connection: psycopg.Connection[Any], job_id: int, series_uid: str) -> int:
        """Queue the analysis of job ``job_id``; returns the task's id. One task per series
        runs at a time (procrastinate's lock, by a hash of the series UID)."""
        deferrer = self._app.configure_task(
            ANALYSE,
            queue=ANALYSIS_QUEUE,
            lock=f"series-{uid_hash(series_uid)}",
            connection=connection,
        )
        return deferrer.defer(job=job_id)

    def cancel(self, connection: psycopg.Connection[Any], task_id: int) -> None:
        """Drop a task still waiting in the queue (its job was superseded)."""
        self._app.job_manager.cancel_job_by_id(task_id, connection=connection)


def analyse(index: Index, worker: AnalysisWorker, poll: float, job_id: int, task_id: int) -> None:
    """The analysis task: claim job ``job_id`` for task ``task_id`` and run it. It runs
    again ``poll`` seconds later while its study still receives, and at once (on whichever
    worker is free) when it was stopped between stages."""
    try:
        job = index.start_job(job_id, task_id)
    except StudyReceiving as exc:
        raise Wait(poll, f"study {exc} still receiving") from None
    if job is not None and not worker.run(job):
        raise Wait(0.0, "stopped between stages")


def cron_every(seconds: float) -> str:
    """A six-field cron (seconds last) that fires about every ``seconds`` (1 to 59)."""
    step = min(59, max(1, round(seconds)))
    return f"* * * * * */{step}"


class QueueWorkers:
    """This process's procrastinate workers, on an event loop in a thread of their own: one
    for the analysis tasks (``concurrency`` at once, each in a thread) when the process
    analyses, one for its periodic tasks. A failure of procrastinate's own (the database
    went away) restarts them after a pause; ``stop`` lets running tasks finish for up to
    ``grace`` seconds."""

    def __init__(
        self, url: str, node_id: str, *, heartbeat: float, lease: float, poll: float, grace: float
    ) -> None:
        # two listening connections, the beats and fetches, a finish per running task
        connector = procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=8)
        self.app = procrastinate.App(connector=connector, periodic_defaults={"max_delay": lease})
        self.app.job_manager = FencedJobManager(connector)
        self.node_id = node_id
        self.heartbeat = heartbeat
        self.lease = lease
        self.poll = poll
        self.grace = grace
        self._analysis = 0
        self._periodic_queues: list[str] = []
        self._stop = threading.Event()
        self._workers: list[Worker] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def analyse_with(self, run: Callable[[int, int], None], concurrency: int) -> None:
        """Run the analysis tasks: ``run(job id, task id)``, which raises ``Wait`` to be run
        again later."""

        def analyse(context: JobContext, job: int) -> None:
            assert context.job.id is not None
            run(job, context.job.id)

        self.app.task(name=ANALYSE, queue=ANALYSIS_QUEUE, pass_context=True, retry=_RunAgain())(
            analyse
        )
        self._analysis = concurrency

    def every(self, name: str, seconds: float, queue: str, run: Callable[[], object]) -> None:
        """Run ``run`` about every ``seconds`` (whole seconds) on one of the processes that
        registered ``name``, one run at a time."""

        def periodic(timestamp: int) -> None:
            run()

        self._periodic(name, seconds, queue, periodic)

    def recover_stalled(self, release: Callable[[int], object]) -> None:
        """Every heartbeat: the analysis tasks of workers whose last beat is older than the
        lease are queued again, after ``release(task id)`` gave their job rows back; then
        procrastinate forgets those workers."""

        async def recover(timestamp: int) -> None:
            manager = self.app.job_manager
            stalled = await manager.get_stalled_jobs(
                queue=ANALYSIS_QUEUE, seconds_since_heartbeat=self.lease
            )
            for job in stalled:
                assert job.id is not None
                await asyncio.to_thread(release, job.id)
                await manager.retry_job(job)
            await manager.prune_stalled_workers(self.lease)

        self._periodic("ctnode.recover", self.heartbeat, MAINTENANCE_QUEUE, recover)

    def _periodic(
        self, name: str, seconds: float, queue: str, function: Callable[..., object]
    ) -> None:
        """Register ``function(timestamp)`` as periodic task ``name`` on ``queue``; the
        queueing lock keeps at most one run waiting."""
        task = self.app.task(name=name, queue=queue, queueing_lock=name)(function)
        self.app.periodic(cron=cron_every(seconds), periodic_id=name)(task)
        if queue not in self._periodic_queues:
            self._periodic_queues.append(queue)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="queue", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> bool:
        """Stop fetching tasks; True when the running ones ended within the grace period
        (procrastinate's graceful stop: running tasks finish, for up to ``grace`` seconds,
        and record their outcome while the queue's connections are still open)."""
        self._stop.set()
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._stop_workers)
        if self._thread is None:
            return True
        self._thread.join(self.grace + 5.0)
        return not self._thread.is_alive()

    def _stop_workers(self) -> None:
        for worker in self._workers:
            worker.stop()  # type: ignore[no-untyped-call]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                asyncio.run(self._main())
            except Exception:
                log.exception("the job queue's workers failed; starting them again")
                self._stop.wait(5.0)

    async def _main(self) -> None:
        async with self.app.open_async():
            workers = []
            if self._analysis:
                workers.append(self._worker([ANALYSIS_QUEUE], self._analysis))
            if self._periodic_queues:
                workers.append(self._worker(self._periodic_queues, 1))
            self._workers = workers
            runs = [asyncio.create_task(w.run()) for w in workers]  # type: ignore[no-untyped-call]
            # A stop before this point is seen here, one after it by ``stop``: either way
            # the workers are stopped after their ``run`` began (which clears a stop).
            self._loop = asyncio.get_running_loop()
            if self._stop.is_set():
                self._loop.call_soon(self._stop_workers)
            try:
                await asyncio.gather(*runs)
            finally:
                self._loop = None

    def _worker(self, queues: list[str], concurrency: int) -> Worker:
        return Worker(
            self.app,
            queues=queues,
            name=f"{self.node_id}:{'+'.join(queues)}",
            concurrency=concurrency,
            fetch_job_polling_interval=self.poll,
            shutdown_graceful_timeout=self.grace,
            delete_jobs="successful",
            install_signal_handlers=False,
            update_heartbeat_interval=self.heartbeat,
            stalled_worker_timeout=self.lease,
        )
