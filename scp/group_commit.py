"""Group commit: the last durability steps of several instances done once for all of them.

Every C-STORE ends in the same two waits for the disk: the fsync of the directory its file
was renamed into and the index transaction (``synchronous=FULL``). Concurrent associations
used to queue for the index lock and pay both once per instance. Here the first instance
that arrives becomes the leader: it takes every instance waiting at that moment, fsyncs
each of their directories once and records them all in one index transaction, then
wakes them. Instances arriving meanwhile wait for the next round, whose leader is one of
them. No timer holds anything back: a lone association's instance commits at once.

Each waiter learns the outcome of its own round only after the round's commit returned,
so Success still means the file and its row are durable; a failure of the round fails
every instance in it (the transaction is all or nothing) and each caller removes its file.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scp.sink import InstanceSink, ReceivedInstance
from scp.spool import Spool


class CommitFailed(Exception):
    """The round this instance was part of failed: nothing of it was committed."""


@dataclass(eq=False)
class _Waiting:
    instance: ReceivedInstance
    folder: Path
    done: bool = False
    error: BaseException | None = field(default=None)


class GroupCommit:
    """Makes placed instances durable in rounds shared by concurrent callers."""

    def __init__(self, spool: Spool, sink: InstanceSink) -> None:
        self.spool = spool
        self.sink = sink
        self._cond = threading.Condition()
        self._queue: list[_Waiting] = []
        self._leading = False
        self.rounds = 0

    def commit(self, instance: ReceivedInstance, folder: Path) -> None:
        """Return once ``folder`` (where the instance's synced file was renamed) is synced
        and the instance's row is committed; raise ``CommitFailed`` if its round failed."""
        waiting = _Waiting(instance, folder)
        with self._cond:
            self._queue.append(waiting)
            while not waiting.done and self._leading:
                self._cond.wait()
            if waiting.done:
                _raise_failure(waiting)
                return
            self._leading = True
            batch, self._queue = self._queue, []
        error: BaseException | None = CommitFailed("the commit was interrupted")
        try:
            self._durable(batch)
            error = None
        except Exception as exc:  # every waiter gets the failure; none is left hanging
            error = exc
        finally:
            with self._cond:
                for member in batch:
                    member.done, member.error = True, error
                self._leading = False
                self.rounds += 1
                self._cond.notify_all()
        _raise_failure(waiting)

    def _durable(self, batch: Sequence[_Waiting]) -> None:
        for folder in dict.fromkeys(member.folder for member in batch):
            self.spool.sync_directory(folder)
        self.sink.record_many([member.instance for member in batch])


def _raise_failure(waiting: _Waiting) -> None:
    if waiting.error is not None:
        raise CommitFailed(str(waiting.error)) from waiting.error
