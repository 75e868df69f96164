"""The assembler's shell: a scheduled tick that feeds ``assembler.step`` from the index and
queues an analysis job for every series that became STABLE. Every receiving process ticks;
on PostgreSQL an advisory lock lets one host step at a time, and ``mark_stable``'s revision
guard makes a racing step harmless anyway."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler

from node import assembler
from node.index import Index
from scp.uids import uid_hash

log = logging.getLogger(__name__)


class Assembly:
    """Runs ``assembler.step`` every ``tick`` seconds against the index."""

    def __init__(
        self,
        index: Index,
        stable_age: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.stable_age = stable_age
        self.clock = clock
        self.wall_clock = wall_clock
        self._watched: dict[str, assembler.Watch] = {}
        self._lock = threading.Lock()

    def tick(self) -> list[int]:
        """One assembler step; returns the ids of the jobs it queued. With several hosts
        one of them steps at a time (the others skip the tick)."""
        with self._lock, self.index.exclusive("assembly") as mine:
            if not mine:
                return []
            wall = self.wall_clock()
            observed = [
                assembler.Observed(s.series_uid, s.revision, wall - s.last_received)
                for s in self.index.open_series()
            ]
            self._watched, actions = assembler.step(
                self._watched, observed, self.clock(), self.stable_age
            )
            jobs = []
            for action in actions:
                job = self.index.mark_stable(action.series_uid, action.revision)
                if job is None:
                    log.info("series %s changed while stabilising", uid_hash(action.series_uid))
                    continue
                log.info(
                    "series %s STABLE at revision %d, job %d queued",
                    uid_hash(action.series_uid),
                    action.revision,
                    job,
                )
                jobs.append(job)
            return jobs


def add_to(scheduler: BackgroundScheduler, assembly: Assembly, tick: float) -> None:
    """Tick the assembly every ``tick`` seconds (one run at a time)."""
    scheduler.add_job(
        _safe(assembly.tick, "assembly"),
        "interval",
        seconds=tick,
        max_instances=1,
        coalesce=True,
        id="assembly",
    )


def _safe(function: Callable[[], object], name: str) -> Callable[[], None]:
    def run() -> None:
        try:
            function()
        except Exception:
            log.exception("%s tick failed; retrying at the next tick", name)

    return run
