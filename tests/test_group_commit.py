"""Group commit (``scp.group_commit``) on a real spool and index: instances of concurrent
callers share one directory fsync and one index transaction, each caller returns only after
its round committed, and a failed round fails every instance in it and commits none."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from node.index import Index
from scp.group_commit import CommitFailed, GroupCommit
from scp.sink import ReceivedInstance
from scp.spool import Spool
from scp.validation import Identity
from tests.factory import ct_series


class SlowIndex(Index):
    """The node's index with a pause before each commit, so that callers pile up behind a
    round deterministically; it counts the instances of every transaction."""

    def __init__(self, data_dir: Path, pause: float) -> None:
        super().__init__(data_dir)
        self.pause = pause
        self.transactions: list[int] = []

    def record_many(self, instances: Sequence[ReceivedInstance]) -> None:
        time.sleep(self.pause)
        self.transactions.append(len(instances))
        super().record_many(instances)


def _placed(spool: Spool, k: int, seed: str) -> tuple[ReceivedInstance, Path]:
    ds = ct_series(1, 8, 8, seed=f"{seed}{k}")[0]
    identity = Identity(
        ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID
    )
    relative = Spool.relative_path(
        identity.study_uid, identity.series_uid, identity.sop_instance_uid, f"{k:064x}"
    )
    temp = spool.tmp_dir / f"in{k}.dcm"
    ds.save_as(temp, enforce_file_format=True)
    spool.sync_file(temp)
    final = spool.move_in(temp, relative)
    received = ReceivedInstance(identity, ds, relative, f"{k:064x}", 1, "1.2", "SCU")
    return received, final.parent


def _commit_all(
    group: GroupCommit, items: list[tuple[ReceivedInstance, Path]]
) -> list[BaseException | None]:
    """Commit the first item, then the rest from their own threads while the first round is
    still in its (slowed) commit: they share the second round."""
    outcomes: list[BaseException | None] = [None] * len(items)

    def commit(k: int) -> None:
        try:
            group.commit(*items[k])
        except CommitFailed as exc:
            outcomes[k] = exc

    threads = [threading.Thread(target=commit, args=(k,)) for k in range(len(items))]
    threads[0].start()
    time.sleep(0.1)
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(10)
    return outcomes


def test_concurrent_instances_share_one_transaction(tmp_path: Path) -> None:
    spool, index = Spool(tmp_path), SlowIndex(tmp_path, pause=0.4)
    group = GroupCommit(spool, index)
    items = [_placed(spool, k, "group") for k in range(6)]
    assert _commit_all(group, items) == [None] * 6
    assert index.transactions == [1, 5] and group.rounds == 2
    rows = index.query("SELECT sop_instance_uid, path FROM instances")
    assert {r["sop_instance_uid"] for r in rows} == {i.identity.sop_instance_uid for i, _ in items}
    assert all(spool.path(r["path"]).is_file() for r in rows)


def test_a_lone_instance_commits_at_once(tmp_path: Path) -> None:
    spool, index = Spool(tmp_path), SlowIndex(tmp_path, pause=0.0)
    group = GroupCommit(spool, index)
    start = time.monotonic()
    group.commit(*_placed(spool, 0, "alone"))
    assert time.monotonic() - start < 0.5
    assert index.transactions == [1]


def test_a_failed_round_fails_every_instance_in_it_and_commits_none(tmp_path: Path) -> None:
    spool, index = Spool(tmp_path), SlowIndex(tmp_path, pause=0.4)
    group = GroupCommit(spool, index)
    items = [_placed(spool, k, "fail") for k in range(4)]
    poisoned = items[2][0].identity.sop_instance_uid
    index.conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON instances "
        f"WHEN NEW.sop_instance_uid = '{poisoned}' BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    outcomes = _commit_all(group, items)
    assert outcomes[0] is None
    assert all(isinstance(outcome, CommitFailed) for outcome in outcomes[1:])
    assert index.transactions == [1, 3]
    rows = index.query("SELECT sop_instance_uid FROM instances")
    assert [r["sop_instance_uid"] for r in rows] == [items[0][0].identity.sop_instance_uid]
    series = index.query("SELECT COUNT(*) AS n FROM series")[0]["n"]
    assert series == 1  # the failed round's series rows were rolled back too
    index.conn.execute("DROP TRIGGER refuse")
    group.commit(*items[2])  # the next round is unaffected
    assert index.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 2


def test_a_directory_that_cannot_be_synced_fails_the_round(tmp_path: Path) -> None:
    spool, index = Spool(tmp_path), SlowIndex(tmp_path, pause=0.0)
    group = GroupCommit(spool, index)
    received, _folder = _placed(spool, 0, "dir")
    with pytest.raises(CommitFailed):
        group.commit(received, tmp_path / "no such folder")
    assert index.transactions == []
    assert index.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0
