"""Start-up recovery: make the data directory and the index agree before listening.

A crash can leave temp files (interrupted receptions), placed files whose index row was never
committed (never acknowledged, so the sender still has them), and, after disk trouble,
index rows whose file is gone. The first two are removed; the third is dropped from the
index with an error in the log, and its series counts as changed. Jobs that were running
when the process died are queued again (their outputs are deterministic, so a re-run
produces the same objects, and the outbox sends each once).

With several receivers sharing the spool (``orphan_age`` above 0) a file without a row may be
another receiver's instance between its rename and its commit: only temp files and unindexed
files older than ``orphan_age`` seconds are removed. Jobs are queued again only where this
process's node id held them, or their lease ran out (another host's live claim is left).
A process that does not receive (``spool`` False) leaves the spool alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from node.index import Index
from scp.spool import Spool
from scp.uids import uid_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryReport:
    temp_files_removed: int
    orphans_removed: int
    missing_files: int
    jobs_requeued: int = 0


def recover(
    index: Index, spool: Spool, *, spool_too: bool = True, orphan_age: float = 0.0
) -> RecoveryReport:
    if not spool_too:
        return RecoveryReport(0, 0, 0, index.requeue_interrupted())
    temp = spool.clean_temp(orphan_age)
    indexed = index.indexed_paths()
    orphans = 0
    for relative in spool.stored():
        if relative not in indexed and _older(spool.path(relative), orphan_age):
            spool.remove(relative)
            orphans += 1
    if orphan_age:
        indexed = index.indexed_paths()  # rows committed by other receivers meanwhile
    missing = 0
    for relative, (sop_uid, series_uid) in indexed.items():
        if not spool.path(relative).is_file():
            log.error(
                "indexed instance %s has no file: dropped from series %s",
                uid_hash(sop_uid),
                uid_hash(series_uid),
            )
            index.forget_instance(sop_uid, series_uid)
            missing += 1
    requeued = index.requeue_interrupted()
    report = RecoveryReport(temp, orphans, missing, requeued)
    if temp or orphans or missing or requeued:
        log.warning(
            "recovery: %d temp files and %d unacknowledged files removed, %d indexed files "
            "missing, %d interrupted jobs queued again",
            temp,
            orphans,
            missing,
            requeued,
        )
    return report


def _older(path: Path, age: float) -> bool:
    """Whether ``path`` was last written more than ``age`` seconds ago (gone: False)."""
    if age <= 0:
        return True
    try:
        return time.time() - path.stat().st_mtime > age
    except FileNotFoundError:
        return False
