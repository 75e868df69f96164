"""The node as a long-running service: ``Node`` wires the storage SCP, the index, the
assembler, the workers, the outbox and the HTTP face (``ctnode serve`` runs it: ``cli.serve``).

Start-up order matters: recover the data directory first, then listen, then assemble. On
SIGTERM or SIGINT the listener closes (in-flight stores finish their handler), each worker
stops between stages (its job goes back to the queue), the scheduler stops between ticks,
and the process exits 0; a stage still running after ``worker.grace`` seconds is abandoned
(its job is still marked running, and recovery queues it again at the next start).

With ``scp.processes`` above 1 the main process starts that many minus one receiving
processes (``serve --receiver``) that listen on the same port (SO_REUSEPORT) and write into
the same spool and index; pynetdicom's association threads share one GIL, so this is how
concurrent associations use more than one core. Only the main process recovers and
assembles.

``role`` picks what this process does (``ctnode serve --role``): ``receiver`` (the SCP, the
assembly tick), ``worker`` (analysis), ``sender`` (the outbox), ``api`` (HTTP) or ``all``
(every part: the single-host node). Every process but the extra receiving ones registers in
the index's ``nodes`` table under its node id and beats there every ``cluster.heartbeat``
seconds: the beat renews the leases of the deliveries (and, on SQLite, the jobs) it holds
and queues again those whose holder stopped beating (``node.index.jobs``). Over PostgreSQL
the analysis queue and the periodic tasks are procrastinate's (``node.queue``): workers run
the analysis tasks, receivers the assembly tick, both the recovery of stalled workers' jobs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from config import Settings, __version__
from inference.availability import AnalyzerState, analyzer_states
from node.assembler_tick import Assembly
from node.assembler_tick import add_to as add_assembly
from node.http.api import ApiServer, check_exposure, create_app, default_checks
from node.http.auth import ApiContext
from node.http.predict import Predictor
from node.index import Index
from node.outbox import Outbox, destinations_from
from node.recovery import recover
from node.worker import Pipeline, Worker, run_forever
from scp.server import StorageSCP
from scp.spool import Spool

if TYPE_CHECKING:
    from node.queue import QueueWorkers

log = logging.getLogger(__name__)

ROLES = ("all", "receiver", "worker", "sender", "api")


def default_node_id(role: str) -> str:
    """The host name, with the role when this process plays only one."""
    host = socket.gethostname()
    return host if role == "all" else f"{host}-{role}"


class Node:
    """The wired service; ``start``/``stop`` so tests can run it in-process too.

    ``pipeline`` analyses a stable series; without one, jobs stay queued (visible in
    ``ctnode status``) until a node with analysis picks them up.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        role: str = "all",
        receiver_only: bool = False,
        pipeline: Pipeline | None = None,
        analyzers: Sequence[AnalyzerState] | None = None,
    ) -> None:
        """``analyzers``: what the pipeline's ensemble found at its start; without it the
        node works it out from the weights store (a receive-only node still reports it)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        self.settings = settings
        self.role = role
        self.receiver_only = receiver_only
        self.node_id = settings.cluster.node_id or default_node_id(role)
        self._stop_workers = threading.Event()
        self._stop_heartbeat = threading.Event()
        root = settings.storage.root
        self.spool = Spool(root, fsync=settings.storage.fsync)
        self.index = Index(
            root,
            url=settings.database.url,
            pool_size=settings.database.pool_size,
            node_id=self.node_id,
            lease=settings.cluster.lease,
        )
        self.scp = StorageSCP(settings.scp, self.spool, self.index)
        self.assembly = Assembly(self.index, settings.assembly.stable_age)
        results = root / "results"
        destinations = destinations_from(
            settings.destinations,
            settings.outbox.return_addresses,
            settings.scp.ae_title,
            settings.outbox.timeout,
        )
        self.outbox = Outbox(self.index, results, destinations, settings.outbox)
        self.workers = []
        if pipeline is not None and self.plays("worker"):
            self.workers = [
                Worker(
                    self.index,
                    self.spool.store_dir,
                    results,
                    pipeline,
                    self.destinations_for,
                    stopping=self._stop_workers.is_set,
                )
                for _ in range(settings.worker.count)
            ]
        self.queue = self._queue() if settings.database.url else None
        self.api: ApiServer | None = None
        if settings.api.enabled and not receiver_only and self.plays("api"):
            check_exposure(settings.api.host, settings.api.token)
            checks = default_checks(settings, self.index, lambda: self.scp.running)
            if not self.plays("receiver"):
                del checks["scp"]  # the listener is another process's part
            checks["workers"] = self._workers_alive
            checks["analyzers"] = self._analyzer_faults
            # an API process alone waits for the workers of other processes
            workers = len(self.workers) or int(role == "api")
            predictor = Predictor(settings, self.index, self.scp, workers)
            context = ApiContext(
                settings, self.index, checks, results, predictor, lambda: self.analyzers
            )
            self.api = ApiServer(
                create_app(context), settings.api.host, settings.api.port, settings.api.tls
            )
        self.analyzers: list[AnalyzerState] = list(analyzers or ())
        self._known_analyzers = analyzers is not None
        self._threads: list[threading.Thread] = []
        self._scheduler: BackgroundScheduler | None = None

    def _queue(self) -> QueueWorkers | None:
        """The procrastinate workers this process needs over PostgreSQL, if any."""
        # procrastinate is the `postgres` extra: a node on SQLite never loads it
        from node.queue import ASSEMBLY_QUEUE, QueueWorkers, analyse  # noqa: PLC0415

        cluster = self.settings.cluster
        queue = QueueWorkers(
            self.settings.database.url,
            self.node_id,
            heartbeat=cluster.heartbeat,
            lease=cluster.lease,
            poll=self.settings.worker.poll,
            grace=self.settings.worker.grace,
        )
        if self.workers:
            run = partial(analyse, self.index, self.workers[0], self.settings.worker.poll)
            queue.analyse_with(run, len(self.workers))
        if self.plays("receiver"):
            assembly = self.settings.assembly.tick
            queue.every("ctnode.assemble", assembly, ASSEMBLY_QUEUE, self.assembly.tick)
        if self.workers or self.plays("receiver"):
            queue.recover_stalled(self.index.release_task)
            return queue
        return None

    def plays(self, role: str) -> bool:
        """Whether this process does ``role``'s part (``all`` does every part)."""
        return not self.receiver_only and self.role in ("all", role)

    @property
    def shared(self) -> bool:
        """Whether other processes may use the same index and spool."""
        return bool(self.settings.database.url) or self.role != "all"

    def _analyzer_faults(self) -> str | None:
        """Registered weights that are missing or corrupt need the site's attention."""
        faults = [f"{a.name}: {a.reason}" for a in self.analyzers if a.fault]
        return "; ".join(faults) or None

    def _workers_alive(self) -> str | None:
        """The analysis workers run (none configured is a choice, not a fault)."""
        dead = [t.name for t in self._threads if not t.is_alive()]
        if self.queue is not None and self._scheduler is not None and not self.queue.alive():
            dead.append("queue")
        if dead and not self._stop_workers.is_set():
            return f"worker threads stopped: {', '.join(dead)}"
        return None

    def destinations_for(self, series_uid: str) -> list[str]:
        """Every default destination, plus the sender's return address when configured."""
        names = [d.name for d in self.settings.destinations if d.default]
        if self.settings.outbox.return_to_sender:
            callers = self.index.query(
                "SELECT DISTINCT calling_ae FROM instances WHERE series_uid = ?", (series_uid,)
            )
            names += [
                f"return:{c['calling_ae']}"
                for c in callers
                if f"return:{c['calling_ae']}" in self.outbox.destinations
            ]
        return names

    def start(self) -> None:
        if not self.receiver_only:
            recover(
                self.index,
                self.spool,
                spool_too=self.plays("receiver"),
                orphan_age=self.settings.cluster.orphan_age if self.shared else 0.0,
            )
            self.index.register_node(self.role, os.getpid(), __version__)
            if not self._known_analyzers:
                self.analyzers = analyzer_states(
                    Path(self.settings.neural.weights_dir),
                    self.settings.fusion.model,
                    self.settings.neural.models,
                )
            for analyzer in self.analyzers:
                log.log(
                    logging.WARNING if analyzer.fault else logging.INFO,
                    "analyzer %s %s: %s",
                    analyzer.name,
                    "enabled" if analyzer.enabled else "disabled",
                    analyzer.reason,
                )
        if self.receiver_only or self.plays("receiver"):
            self.scp.start()
        if self.receiver_only:
            return
        scheduler = BackgroundScheduler(daemon=True)
        if self.plays("receiver") and self.queue is None:
            add_assembly(scheduler, self.assembly, self.settings.assembly.tick)
        if self.plays("sender"):
            scheduler.add_job(
                self.outbox.tick,
                "interval",
                seconds=self.settings.outbox.tick,
                max_instances=1,
                coalesce=True,
                id="outbox",
            )
        scheduler.start()
        self._scheduler = scheduler
        if self.api is not None:
            self.api.start()
        if self.queue is not None:
            self.queue.start()
        for number, worker in enumerate(self.workers if self.queue is None else ()):
            thread = threading.Thread(
                target=run_forever,
                args=(worker, self._stop_workers, self.settings.worker.poll),
                name=f"worker-{number}",
                daemon=True,  # a stage past the grace period must not hold the exit
            )
            thread.start()
            self._threads.append(thread)
        self._heartbeat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        """Every ``cluster.heartbeat`` seconds: this process is alive and still holds its
        claims; claims whose holder stopped beating go back to their queues."""
        while not self._stop_heartbeat.wait(self.settings.cluster.heartbeat):
            try:
                self.index.heartbeat()
                self.index.renew_leases()
                self.index.renew_delivery_leases()
                self.index.expire_leases()
            except Exception:
                log.exception("heartbeat failed; trying again at the next one")

    def stop(self) -> None:
        """Close the listener, let each worker finish the stage it is in (for up to
        ``worker.grace`` seconds), stop the ticks."""
        self._stop_workers.set()
        self.scp.stop()
        if self.api is not None:
            self.api.stop()
        deadline = time.monotonic() + self.settings.worker.grace
        abandoned = self.queue is not None and not self.queue.stop()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            abandoned |= thread.is_alive()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        if abandoned:
            log.warning(
                "a worker was still in a stage after %.0f s; its job runs again at the next start",
                self.settings.worker.grace,
            )
            return  # the abandoned stage may still use the index: leave it open
        self._stop_heartbeat.set()
        if not self.receiver_only:
            try:
                self.index.unregister_node()
            except Exception:
                log.exception("could not mark this node stopped in the index")
        self.index.close()
