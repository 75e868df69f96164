"""The index's connections. Without ``[database] url``: SQLite in the data directory, one
write connection shared by the node's threads behind a lock, every write one transaction
committed with ``synchronous=FULL`` (an acknowledged instance's row survives power loss like
its file does), and a second connection the SCP's duplicate check reads from without waiting
for a commit (WAL); other processes (``ctnode status``, more ``serve`` processes on the host)
open the same file. With a ``postgresql://`` URL: a connection pool to a database that
several hosts share (``node.index.postgres``); the queries are the same, and ``Dialect``
holds the few clauses where the two differ.
"""

from __future__ import annotations

import hashlib
import importlib
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from node.index.schema import DB_NAME, create

if TYPE_CHECKING:
    from node.index.postgres import Pool
    from node.queue import Deferrer


def _import_sqlite_utils() -> ModuleType:
    """sqlite-utils without pandas. sqlite-utils imports pandas (and pyarrow with it)
    whenever it is installed, only to type pandas values a caller might insert; the index
    never inserts any, and the training extra installs pandas: every serving process
    carried ~95 MB and 0.5 s of start-up for it. A process that already uses pandas keeps
    sqlite-utils' pandas support."""
    if "pandas" in sys.modules or "sqlite_utils" in sys.modules:
        return importlib.import_module("sqlite_utils")
    sys.modules["pandas"] = None  # type: ignore[assignment]  # import pandas -> ImportError
    try:
        return importlib.import_module("sqlite_utils")
    finally:
        del sys.modules["pandas"]


sqlite_utils = _import_sqlite_utils()


def _write_ahead_log(conn: sqlite3.Connection, patience: float = 10.0) -> None:
    """Switch the index to WAL mode. Opening a brand-new file while another process
    switches it too can answer "database is locked" at once, without waiting out the busy
    timeout (SQLite does not wait where waiting could deadlock; 2 of 570 simultaneous starts
    failed so): such a start tries again for up to ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Dialect:
    """The clauses where SQLite and PostgreSQL differ. ``lock`` rows a transaction reads to
    decide an update (SQLite's ``BEGIN IMMEDIATE`` already serialises writers), ``skip_locked``
    lets concurrent claims pass each other, ``epoch`` is the database's clock in seconds (one
    clock for every host's leases), ``key_lock`` (a statement with one parameter, or empty)
    serialises the transactions that write the same series until they commit."""

    name: str
    lock: str
    skip_locked: str
    epoch: str
    key_lock: str


SQLITE = Dialect("sqlite", "", "", "((julianday('now') - 2440587.5) * 86400.0)", "")
POSTGRES = Dialect(
    "postgresql",
    " FOR UPDATE",
    " FOR UPDATE SKIP LOCKED",
    "EXTRACT(EPOCH FROM clock_timestamp())",
    "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))",
)


class Tx(Protocol):
    """A write transaction: ``sqlite3.Connection`` or ``node.index.postgres.Transaction``."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...


class Connection:
    """Read and write access to the index: ``index.sqlite`` in the data directory, or the
    PostgreSQL database at ``url``; the schema is created or migrated on first open
    (``node.index.schema``, ``node/index/migrations``). ``node_id`` names this process in
    the leases it takes, each ``lease`` seconds long until its heartbeat renews it."""

    def __init__(
        self,
        data_dir: Path,
        *,
        read_only: bool = False,
        url: str = "",
        pool_size: int = 8,
        node_id: str = "",
        lease: float = 60.0,
    ) -> None:
        self.node_id = node_id or socket.gethostname()
        self.lease = lease
        self.url = url
        self.data_dir = data_dir
        self.pool: Pool | None = None
        self.tasks: Deferrer | None = None  # PostgreSQL: the job queue is procrastinate
        if url:
            # psycopg is the optional `postgres` extra: a node on SQLite never loads it
            from node.index.postgres import Pool  # noqa: PLC0415
            from node.queue import Deferrer  # noqa: PLC0415

            self.dialect = POSTGRES
            self.pool = Pool(url, pool_size, migrate=not read_only)
            self.tasks = Deferrer()
            return
        self.dialect = SQLITE
        self.tasks = None
        path = data_dir / DB_NAME
        if read_only:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 10000")
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._reader, self._reader_lock = conn, self._lock
        if not read_only:
            _write_ahead_log(conn)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            with self._lock:
                # Several processes may open one index at once (``--role``s on one host):
                # the schema is created or migrated by one of them at a time, in one write
                # transaction taken up front (waiting on busy_timeout), never by a read
                # transaction that must upgrade to a write, which SQLite refuses at once
                # when another process wrote in between ("database is locked").
                conn.execute("BEGIN IMMEDIATE")
                try:
                    create(self.db)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            # The SCP's duplicate check reads here: in WAL mode it sees every committed row
            # without waiting for the write connection's lock (held through each commit).
            self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._reader.row_factory = sqlite3.Row
            self._reader.execute("PRAGMA busy_timeout = 10000")
            self._reader_lock = threading.RLock()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            return
        if self._reader is not self.conn:
            self._reader.close()
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One write transaction (serialised across threads on SQLite); rolled back on error.
        It answers ``execute`` and ``executemany`` like a ``sqlite3.Connection``."""
        if self.pool is not None:
            with self.pool.transaction() as tx:
                yield tx
            return
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        if self.pool is not None:
            return self.pool.query(sql, params)
        with self._lock:
            return [dict(row) for row in self.conn.execute(sql, params).fetchall()]

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """A query that need not wait for the write connection (SQLite's second one)."""
        if self.pool is not None:
            return self.pool.query(sql, params)
        with self._reader_lock:
            return [dict(row) for row in self._reader.execute(sql, params).fetchall()]

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Whether this process may run the periodic task ``name`` now, no other process
        running it: a session advisory lock on PostgreSQL (every host). On SQLite always
        True: one host, ``BEGIN IMMEDIATE`` serialises the task's writes and each write is
        guarded by what it read (e.g. a series' revision)."""
        if self.pool is None:
            yield True
            return
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:7], "big")
        with self.pool.try_lock(key) as held:
            yield held
