"""The index's connections: one write connection shared by the node's threads behind a lock,
every write one transaction committed with ``synchronous=FULL`` (an acknowledged instance's
row survives power loss like its file does), and a second connection the SCP's duplicate
check reads from without waiting for a commit (WAL). Other processes (``ctnode status``)
open the file read-only beside the writer.
"""

from __future__ import annotations

import importlib
import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from node.index.schema import DB_NAME, create


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


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Connection:
    """Read and write access to ``index.sqlite`` in the data directory; the schema is
    created on first open (``node.index.schema``)."""

    def __init__(self, data_dir: Path, *, read_only: bool = False) -> None:
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
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            with self._lock:
                create(self.db)
            # The SCP's duplicate check reads here: in WAL mode it sees every committed row
            # without waiting for the write connection's lock (held through each commit).
            self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._reader.row_factory = sqlite3.Row
            self._reader.execute("PRAGMA busy_timeout = 10000")
            self._reader_lock = threading.RLock()

    def close(self) -> None:
        if self._reader is not self.conn:
            self._reader.close()
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, serialised across threads; rolled back on error."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self.conn.execute(sql, params).fetchall()]
