"""The durable store of received instances: temp file, fsync, atomic rename, fsync directory.

Layout under the data directory::

    tmp/                       files being received (removed on start-up)
    store/<study>/<series>/<sop>-<content>.dcm

Every name component is a hash (``scp.uids.name_hash`` of the UID, the first 12 hex digits of
the content's SHA-256): no DICOM value ever becomes part of a path. Because a changed
instance gets a new name, replacing it never overwrites the copy the index still points to.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from scp.uids import name_hash


class Spool:
    """Files of the node's data directory, written so that an acknowledged file survives a
    crash or power loss (when ``fsync`` is on)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.store_dir = root / "store"
        self.fsync = fsync
        for folder in (self.root, self.tmp_dir, self.store_dir):
            folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def relative_path(study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> str:
        """Where an instance lives under ``store/``, derived from hashes only."""
        return (
            f"{name_hash(study_uid)[:16]}/{name_hash(series_uid)[:16]}/"
            f"{name_hash(sop_uid)}-{sha256[:12]}.dcm"
        )

    def path(self, relative: str) -> Path:
        return self.store_dir / relative

    def place(self, temp: Path, relative: str) -> Path:
        """Move a complete temp file to ``store/relative`` durably; returns the final path."""
        self.sync_file(temp)
        final = self.move_in(temp, relative)
        self.sync_directory(final.parent)
        return final

    def sync_file(self, path: Path) -> None:
        """The first step of ``place``: the file's bytes reach the disk."""
        if self.fsync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        """Start writing bytes just appended to a file being received, so that its
        ``sync_file`` later finds less to wait for (Linux ``sync_file_range`` with
        SYNC_FILE_RANGE_WRITE: it only starts the writes, it guarantees nothing; the fsync
        still does). Elsewhere, and with fsync off, it does nothing."""
        if self.fsync and _sync_file_range is not None:
            _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    def move_in(self, temp: Path, relative: str) -> Path:
        """The middle step of ``place``: rename a temp file, already synced with
        ``sync_file``, to ``store/relative``. Durable only once ``sync_directory`` of its
        folder has returned; ``scp.group_commit`` does that once for several instances."""
        final = self.store_dir / relative
        self._make_dirs(final.parent)
        os.replace(temp, final)
        return final

    def sync_directory(self, folder: Path) -> None:
        """The last step of ``place``: the renames into ``folder`` reach the disk."""
        if self.fsync:
            _fsync_dir(folder)

    def write_atomic(self, relative: str, chunks: Iterable[bytes]) -> Path:
        """Write ``chunks`` to ``store/relative`` via a temp file; readers never see a part."""
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=".part")
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
            return self.place(temp, relative)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def remove(self, relative: str) -> None:
        """Delete a stored file (best effort: a missing file is already what we want)."""
        (self.store_dir / relative).unlink(missing_ok=True)

    def clean_temp(self, older_than: float = 0.0) -> int:
        """Remove leftovers of interrupted receptions; returns how many were removed. With
        ``older_than`` only files untouched that many seconds (others may be receptions
        in progress in another process sharing the spool)."""
        removed = 0
        cutoff = time.time() - older_than
        for entry in self.tmp_dir.iterdir():
            try:
                if entry.is_file() and (older_than <= 0 or entry.stat().st_mtime < cutoff):
                    entry.unlink(missing_ok=True)
                    removed += 1
            except FileNotFoundError:
                continue  # finished (renamed) meanwhile
        return removed

    def stored(self) -> Iterator[str]:
        """Relative paths of every file under ``store/``."""
        for dirpath, _dirs, files in os.walk(self.store_dir):
            base = Path(dirpath).relative_to(self.store_dir)
            for name in files:
                yield str(base / name)

    def _make_dirs(self, folder: Path) -> None:
        missing = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for created in reversed(missing):
            created.mkdir(exist_ok=True)
            if self.fsync:
                _fsync_dir(created.parent)


_SYNC_FILE_RANGE_WRITE = 2


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, AttributeError):
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
        function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        function.restype = ctypes.c_int
        return function
    return None


_sync_file_range = _libc_sync_file_range()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
