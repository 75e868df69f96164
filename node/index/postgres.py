"""The index over PostgreSQL: a psycopg 3 connection pool, the schema as versioned plain-SQL
migrations (``node/index/migrations/NNNN_name.sql``, applied in order, each recorded in
``schema_migrations``), and an adapter that lets the queries written for SQLite run unchanged
where the two dialects agree (``?`` placeholders become ``%s``; rows answer by position and
by name like ``sqlite3.Row``).

Several hosts open the same database at once: migrations run under an advisory lock, so the
first host applies them and the others find them recorded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import RowMaker
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x63746E6F6465  # "ctnode": one key for every host applying migrations
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class Row(tuple[Any, ...]):
    """A result row by position (``row[0]``) and by column name (``row["id"]``)."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> Row:
        return Row(values, names)

    return make


_translated: dict[str, str] = {}


def translate(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    text = _translated.get(sql)
    if text is None:
        text = _translated[sql] = sql.replace("%", "%%").replace("?", "%s")
    return text


class Cursor:
    """What a query answered: ``rowcount``, ``fetchone``, ``fetchall``."""

    def __init__(self, cursor: psycopg.Cursor[Row]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchone(self) -> Row | None:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[Row]:
        return self._cursor.fetchall() if self._cursor.description else []


class Transaction:
    """One PostgreSQL transaction with the ``sqlite3.Connection`` calls the queries use."""

    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self.connection = conn  # for procrastinate, to defer a task in this transaction

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return Cursor(self.connection.execute(translate(sql), tuple(params)))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Cursor:
        cursor = self.connection.cursor()
        cursor.executemany(translate(sql), [tuple(r) for r in rows])
        return Cursor(cursor)


class Pool:
    """A pool of connections to one database; ``transaction`` lends one for a transaction."""

    def __init__(self, url: str, size: int, *, migrate: bool = True) -> None:
        self.url = url
        self.pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, size),
            kwargs={"row_factory": _row_factory, "autocommit": True},
            check=ConnectionPool.check_connection,  # a restarted server: stale ones are replaced
            open=False,
            name="ctnode-index",
            timeout=10.0,  # a caller waits this long for a connection while the server is away
        )
        self.pool.open(wait=True, timeout=30.0)
        if migrate:
            with self.pool.connection() as conn:
                apply_migrations(conn)

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self.pool.connection() as conn, conn.transaction():
            yield Transaction(conn)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            rows = conn.execute(translate(sql), tuple(params)).fetchall()
            return [dict(zip(row.keys(), row, strict=True)) for row in rows]

    @contextmanager
    def try_lock(self, key: int) -> Iterator[bool]:
        """A session advisory lock on ``key`` if no other session holds it (False if one
        does), released on leaving: one runner of a periodic task across hosts."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            held = bool(row and row[0])
            try:
                yield held
            finally:
                if held:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def migrations() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every migration shipped with the package, in order: the
    SQL files, and at version 3 the schema of the job queue, procrastinate (``node.queue``),
    taken from the installed package (pinned to one minor release in ``pyproject.toml``: a
    later one comes with a migration of ours that applies procrastinate's own)."""
    found = [(3, "0003_procrastinate", procrastinate_schema())]
    for entry in resources.files("node.index.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def procrastinate_schema() -> str:
    from procrastinate.schema import SchemaManager  # noqa: PLC0415  # the `postgres` extra

    return SchemaManager.get_schema()


def apply_migrations(conn: psycopg.Connection[Row]) -> list[int]:
    """Apply the migrations the database has not recorded, with their records, in one
    transaction (all or none); returns the versions applied. A database newer than this code
    is refused."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "name TEXT NOT NULL, applied TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        shipped = migrations()
        newest = max((v for v, _, _ in shipped), default=0)
        if done and max(done) > newest:
            raise RuntimeError(
                f"the database's schema (version {max(done)}) is newer than this ctnode "
                f"(version {newest}): upgrade ctnode on this host"
            )
        for version, name, sql in shipped:
            if version in done:
                continue
            conn.execute(sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
            )
            applied.append(version)
    if applied:
        log.info("index schema migrated to version %d", applied[-1])
    return applied
