"""Analysis throughput with several worker processes over PostgreSQL, against the embedded
default (one ``ctnode serve`` over SQLite, one worker), in one run.

Every case gets the same studies (small synthetic chest CTs, ``tests/phantoms.py``;
quantitative analysis and the rule fusion only: no neural weights), received and queued first
by a receiving process with no workers, so that only analysis is timed. Then the workers
start (``ctnode serve --role worker``, N processes over PostgreSQL; or ``ctnode serve`` with
its defaults over SQLite), and the clock runs from the moment the last of them registered to
the moment every series has its result. Studies per minute = studies / that time; the
ratio is against the embedded default; s/job is the mean of the jobs' own timings (load,
analyse, report), which shows whether more processes made each job slower (cores shared).
PostgreSQL is a throwaway server from Debian's package (``tests/postgres_server.py``).

    python benchmarks/hosts.py [--studies 12] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from node.index import Index  # noqa: E402
from tests.cluster import Host, store, wait_until  # noqa: E402
from tests.phantoms import chest_phantom  # noqa: E402
from tests.postgres_server import PostgresServer  # noqa: E402

DONE = ("REPORTED", "SENT", "INVALID", "NOT_SELECTED", "FAILED")


def settings(data: Path, url: str) -> dict[str, str]:
    env = {
        "CTNODE_STORAGE__DATA_DIR": str(data),
        "CTNODE_ASSEMBLY__STABLE_AGE": "0.5",
        "CTNODE_ASSEMBLY__TICK": "0.1",
        "CTNODE_WORKER__POLL": "0.1",
        "CTNODE_CLUSTER__HEARTBEAT": "2",
        "CTNODE_DESTINATIONS": "[]",
    }
    if url:
        env["CTNODE_DATABASE__URL"] = url
    return env


def run_case(studies: list[list[Path]], workers: int, url: str, folder: Path) -> dict[str, float]:
    """Receive and queue every study, then time ``workers`` worker processes (``url``
    empty: the embedded default, one process with one worker thread)."""
    data = folder / "data"
    shutil.rmtree(folder, ignore_errors=True)
    data.mkdir(parents=True)
    env = settings(data, url)
    quiet = {**env, "CTNODE_WORKER__COUNT": "0"}
    receiver = Host("receiver" if url else "all", "bench-rx", quiet, folder).start()
    hosts: list[Host] = []
    index: Index | None = None
    try:
        index = opened = wait_until("the index", partial(_open, data, url), 60)
        wait_until("the receiver", partial(receiver.ready, opened), 60)
        for files in studies:
            assert len(store(receiver.port, files)) == len(files)
        wait_until("every study queued", partial(_queued, opened, len(studies)), 120)
        if url:
            hosts = [Host("worker", f"bench-w{k}", env, folder) for k in range(workers)]
        else:
            receiver.stop()
            hosts = [Host("all", "bench-all", env, folder)]
        for host in hosts:
            host.start()
        for host in hosts:
            wait_until("the workers", partial(host.ready, opened), 120)
        started = time.perf_counter()
        wait_until("every series analysed", partial(_finished, opened), 1800)
        seconds = time.perf_counter() - started
        reported = opened.query("SELECT COUNT(*) AS n FROM series WHERE state = 'REPORTED'")
        totals = [
            float(json.loads(r["timings_json"])["total"])
            for r in opened.query("SELECT timings_json FROM results")
        ]
        return {
            "seconds": seconds,
            "reported": float(reported[0]["n"]),
            "job_seconds": sum(totals) / max(1, len(totals)),
        }
    finally:
        for host in [receiver, *hosts]:
            host.stop()
        if index is not None:
            index.close()


def _open(data: Path, url: str) -> Index | None:
    try:
        return Index(data, url=url, node_id="bench")
    except Exception:
        return None  # the receiver has not created the schema yet


def _queued(index: Index, n: int) -> bool:
    return len(index.query("SELECT id FROM jobs WHERE state = 'queued'")) == n


def _finished(index: Index) -> bool:
    return all(r["state"] in DONE for r in index.query("SELECT state FROM series"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ctnode-hosts-"))
    pg = PostgresServer()
    try:
        studies = [chest_phantom(scratch / f"study{k}", f"bench{k}") for k in range(args.studies)]
        rows = [
            (
                "embedded (SQLite, 1 process, 1 worker)",
                run_case(studies, 1, "", scratch / "embedded"),
            )
        ]
        for n in args.workers:
            pg.reset()
            rows.append(
                (
                    f"PostgreSQL, {n} worker process{'es' if n > 1 else ''}",
                    run_case(studies, n, pg.url, scratch / f"pg{n}"),
                )
            )
    finally:
        pg.close()
        shutil.rmtree(scratch, ignore_errors=True)
    reference = rows[0][1]["seconds"]
    print(f"{args.studies} studies (40 slices of 96 x 96 each), quantitative analysis only")
    print(f"{'case':<42} {'seconds':>8} {'studies/min':>12} {'ratio':>6} {'s/job':>6}")
    for name, row in rows:
        per_minute = args.studies / row["seconds"] * 60
        ratio = reference / row["seconds"]
        print(
            f"{name:<42} {row['seconds']:>8.1f} {per_minute:>12.1f} {ratio:>6.2f} "
            f"{row['job_seconds']:>6.2f}"
        )
    print(json.dumps({name: row for name, row in rows}))


if __name__ == "__main__":
    main()
