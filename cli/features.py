"""``ctnode features PATH... --out features.parquet``: the analyzers' features of many
studies, for training a fusion model (``ctnode fusion train``).

Each PATH is a folder, ZIP archive, DICOMDIR or file (one or more studies: give one PATH
per study, e.g. ``cohort/*``, to spread them over processes), or the node's data directory
(or its ``index.sqlite``; with ``[database] url``, the configured data directory, its index
in PostgreSQL): then every study the node reported is one unit, its features
taken from the stored result when the same analyzer code made them, else analysed again
from the stored instances. Features are cached per series and analyzer version (``--cache``,
default beside the output), so an interrupted run resumes and a re-run is quick.

Exit codes: 0 features written (studies that could not be analysed are listed with their
reason); 2 bad arguments; 3 no study gave features; 130 interrupted (run again to resume).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from cli.common import add_config_argument, load_settings
from node.index import DB_NAME, Index
from training.extract import Unit, extract

SQLITE_MAGIC = b"SQLite format 3\x00"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="folder, ZIP, DICOMDIR or file; or the node's data directory / index.sqlite",
    )
    parser.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="parallel processes (default: the number of CPUs)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="feature cache (default: OUT with .cache instead of its suffix)",
    )
    parser.add_argument("--no-cache", action="store_true", help="analyse everything again")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if args.jobs < 1:
        print("ctnode features: --jobs must be at least 1", file=sys.stderr)
        return 2
    units: list[Unit] = []
    for path in args.paths:
        if not path.exists():
            print(f"ctnode features: {path} does not exist", file=sys.stderr)
            return 2
        url = settings.database.url if _same(path, settings.storage.root) else ""
        data_dir = path if url else _node_data_dir(path)
        units.extend(_index_units(data_dir, url) if data_dir else [Unit(path.name, path=path)])
    cache = None if args.no_cache else (args.cache or args.out.with_suffix(".cache"))
    bar = ProgressBar(len(units))
    try:
        table, summary = extract(
            units, settings, cache_dir=cache, jobs=min(args.jobs, max(1, len(units))), progress=bar
        )
    except KeyboardInterrupt:
        bar.close()
        where = f" (cached in {cache})" if cache else ""
        print(
            f"ctnode features: interrupted; finished studies are kept{where}, run it "
            "again to resume",
            file=sys.stderr,
        )
        return 130
    bar.close()
    for failure in summary.failures:
        print(f"  not analysed: {failure.source}: {failure.code}: {failure.reason}")
    if not len(table):
        print("ctnode features: no study could be analysed; nothing written", file=sys.stderr)
        return 3
    table.write(args.out)
    print(
        f"{summary.rows} studies -> {args.out} (schema {table.schema.version}, "
        f"{len(table.schema.names)} features): {summary.analysed} analysed, "
        f"{summary.cached} from the cache, {summary.reused} from the node's results, "
        f"{len(summary.failures)} not analysable"
    )
    return 0


def _node_data_dir(path: Path) -> Path | None:
    """The node's data directory when ``path`` is one (holding ``index.sqlite``) or is its
    index file."""
    if path.is_dir():
        return path if (path / DB_NAME).is_file() else None
    try:
        with path.open("rb") as fh:
            return path.parent if fh.read(16) == SQLITE_MAGIC else None
    except OSError:
        return None


def _same(path: Path, data_dir: Path) -> bool:
    try:
        return path.resolve() == data_dir.resolve()
    except OSError:
        return False


def _index_units(data_dir: Path, url: str = "") -> list[Any]:
    """One unit per study with a reported series: all its stored instances (selection runs
    over the whole study, as in the node) and the latest result the node stored for it.
    ``url``: the index is in that PostgreSQL database (the data directory holds the store)."""
    index = Index(data_dir, read_only=True, url=url, pool_size=1)
    try:
        results = index.query(
            "SELECT r.study_uid, r.result_json FROM results r WHERE r.state = 'REPORTED' "
            "AND r.job_id = (SELECT MAX(job_id) FROM results q WHERE q.series_uid = r.series_uid "
            "AND q.state = 'REPORTED') ORDER BY r.job_id"
        )
        units = []
        store = data_dir / "store"
        for row in results:
            files = tuple(
                store / r["path"]
                for r in index.query(
                    "SELECT i.path FROM instances i JOIN series s ON s.series_uid = i.series_uid "
                    "WHERE s.study_uid = ? ORDER BY i.series_uid, i.instance_number, i.path",
                    (row["study_uid"],),
                )
            )
            units.append(Unit("index", files=files, stored=row["result_json"]))
        return units
    finally:
        index.close()


class ProgressBar:
    """Progress on stderr: redrawn in place on a terminal, one line per unit otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.counts = {"rows": 0, "failed": 0, "cached": 0}

    def __call__(self, done: int, total: int, result: Any) -> None:
        self.counts["rows"] += len(result.rows)
        self.counts["failed"] += len(result.failures)
        self.counts["cached"] += result.cached + result.reused
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (total - done) if done else 0.0
        width = 30
        filled = int(width * done / total) if total else width
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} inputs, "
            f"{self.counts['rows']} studies ({self.counts['cached']} cached, "
            f"{self.counts['failed']} failed) {elapsed:.0f} s, ETA {eta:.0f} s"
        )
        sys.stderr.write(f"\r{line}" if self.tty else f"{line}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
