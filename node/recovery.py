"""Start-up recovery: make the data directory and the index agree before listening.

A crash can leave temp files (interrupted receptions), placed files whose index row was never
committed (never acknowledged, so the sender still has them), and, after disk trouble,
index rows whose file is gone. The first two are removed; the third is dropped from the
index with an error in the log, and its series counts as changed. Jobs that were running
when the process died are queued again (their outputs are deterministic, so a re-run
produces the same objects, and the outbox sends each once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


def recover(index: Index, spool: Spool) -> RecoveryReport:
    temp = spool.clean_temp()
    indexed = index.indexed_paths()
    orphans = 0
    for relative in spool.stored():
        if relative not in indexed:
            spool.remove(relative)
            orphans += 1
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
