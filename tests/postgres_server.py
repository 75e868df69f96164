"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package (``initdb``,
``pg_ctl``), a cluster in a temp directory listening on a free loopback port, trust
authentication, no fsync (a server crash keeps every commit; a machine crash is not
tested). As root (CI) the server runs as the ``postgres`` user, which PostgreSQL insists on.
Tests skip, saying why, where the package is not installed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.node_process import free_port


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PostgresServer:
    """``start``/``stop``/``restart`` a cluster in a temp folder of its own (readable by the
    ``postgres`` user, which pytest's private temp folders are not); ``url`` names its
    database; ``close`` stops it and removes the folder."""

    def __init__(self) -> None:
        initdb, pg_ctl = _tool("initdb"), _tool("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.skip("PostgreSQL not installed (apt-get install postgresql): initdb/pg_ctl")
        try:
            import psycopg  # noqa: F401, PLC0415  # the `postgres` extra, checked where used
        except ImportError:
            pytest.skip("psycopg not installed (pip install -e '.[postgres]')")
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.folder = folder = Path(tempfile.mkdtemp(prefix="ctnode-pg-"))
        self.data = folder / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(folder, "postgres", "postgres")
        self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "ctnode", "-E", "UTF8")
        self.start()
        self.reset()

    @property
    def url(self) -> str:
        return f"postgresql://ctnode@127.0.0.1:{self.port}/ctnode"

    def _run(self, *command: str) -> None:
        result = subprocess.run(
            [*self.as_user, *command], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stderr[-2000:]}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c fsync=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            self.pg_ctl, "-D", str(self.data), "-l", str(self.folder / "server.log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # already down
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop the server (dropping every connection), stay down ``down_for`` seconds."""
        self.stop("immediate")
        time.sleep(down_for)
        self.start()

    def reset(self) -> None:
        """An empty database for the next test."""
        import psycopg  # noqa: PLC0415  # the optional `postgres` extra, checked above

        admin = f"postgresql://ctnode@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS ctnode WITH (FORCE)")
            conn.execute("CREATE DATABASE ctnode")
