"""Input to files: a folder (nested, files without extension), a ZIP archive, a DICOMDIR, or
one DICOM file. Non-DICOM files are skipped and counted.

ZIP archives are unpacked safely by construction: an entry with an absolute path, a drive
letter or ``..`` refuses the whole archive (``path_traversal``); the declared total size
and every entry's compression ratio are capped before anything is written, and the bytes
actually written are counted again while streaming (a lying header does not help a zip
bomb). Extraction goes to a temporary directory that ``open_input`` always removes.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from struct import error as struct_error

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from config import IntakeSettings
from inference.errors import IntakeError

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


@dataclass
class Intake:
    """DICOM files found, and what was left out with why."""

    files: list[Path]
    skipped: int = 0
    notes: list[str] = field(default_factory=list)


@contextmanager
def open_input(path: Path, limits: IntakeSettings = IntakeSettings()) -> Iterator[Intake]:
    """The DICOM files behind ``path``; temporary files live only inside the ``with``.

    A DICOMDIR given as the path is followed (only its referenced files, resolved inside
    its folder); a folder is read whole.
    """
    if not path.exists():
        raise IntakeError("not_found", f"{path} does not exist")
    if path.is_dir():
        # A folder is read whole, its DICOMDIR (if any) skipped: scanner-written DICOMDIRs
        # often reference files that are not there, while the files that are there count.
        yield _from_folder(path)
        return
    if zipfile.is_zipfile(path):
        with tempfile.TemporaryDirectory(prefix="ctnode-intake-") as tmp:
            _extract(path, Path(tmp), limits)
            yield _from_folder(Path(tmp))
        return
    if _is_dicomdir(path):
        yield _from_dicomdir(path)
        return
    if _is_dicom(path):
        yield Intake([path])
        return
    raise IntakeError("not_dicom", "neither a folder, a ZIP archive, a DICOMDIR nor a DICOM file")


def _from_folder(root: Path) -> Intake:
    intake = Intake([])
    for dirpath, _dirs, names in os.walk(root):
        for name in sorted(names):
            candidate = Path(dirpath) / name
            if candidate.is_symlink() or not candidate.is_file():
                intake.skipped += 1
            elif _is_dicom(candidate) and not _is_dicomdir(candidate):
                intake.files.append(candidate)
            else:
                intake.skipped += 1
    intake.files.sort()
    if not intake.files:
        raise IntakeError("no_dicom", f"no DICOM files found ({intake.skipped} other files)")
    if intake.skipped:
        intake.notes.append(f"{intake.skipped} non-DICOM files skipped")
    return intake


def _from_dicomdir(dicomdir: Path) -> Intake:
    """The image files a DICOMDIR references, resolved inside its folder only."""
    try:
        ds = dcmread(dicomdir)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise IntakeError("bad_dicomdir", f"DICOMDIR cannot be read: {exc}") from exc
    base = dicomdir.parent.resolve()
    referenced, missing = [], 0
    for record in ds.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        if any(p in ("", ".", "..") or "/" in p or "\\" in p for p in parts):
            raise IntakeError("path_traversal", "DICOMDIR references a path outside its folder")
        target = base.joinpath(*parts)
        if not target.is_file():
            target = _case_insensitive(base, parts) or target
        if target.is_file() and target.resolve().is_relative_to(base):
            referenced.append(target)
        else:
            missing += 1
    if not referenced:
        raise IntakeError(
            "dicomdir_files_missing", f"the DICOMDIR references {missing} files and none is present"
        )
    intake = Intake(sorted(set(referenced)))
    if missing:
        intake.notes.append(f"{missing} files referenced by the DICOMDIR are missing")
    return intake


def _case_insensitive(base: Path, parts: list[str]) -> Path | None:
    """ISO 9660 media often change the case of file IDs."""
    current = base
    for part in parts:
        try:
            match = next((e for e in current.iterdir() if e.name.upper() == part.upper()), None)
        except OSError:
            return None
        if match is None:
            return None
        current = match
    return current


def _extract(archive: Path, target: Path, limits: IntakeSettings) -> None:
    cap = limits.max_total_mb * 2**20
    try:
        with zipfile.ZipFile(archive) as zf:
            entries = [e for e in zf.infolist() if not e.is_dir()]
            if len(entries) > limits.max_entries:
                raise IntakeError("too_many_files", f"{len(entries)} entries in the archive")
            for entry in entries:
                _check_name(entry.filename)
                ratio = entry.file_size / max(entry.compress_size, 1)
                if entry.file_size > 2**20 and ratio > limits.max_ratio:
                    raise IntakeError("zip_bomb", f"an entry expands {ratio:.0f} times")
            if sum(e.file_size for e in entries) > cap:
                raise IntakeError("too_large", f"archive expands beyond {limits.max_total_mb} MiB")
            written = 0
            for number, entry in enumerate(entries):
                destination = target / f"{number:06d}"  # never a name from the archive
                with zf.open(entry) as source, open(destination, "wb") as sink:
                    while chunk := source.read(1 << 20):
                        written += len(chunk)
                        if written > cap:
                            raise IntakeError(
                                "zip_bomb", "archive expands beyond its declared size and the cap"
                            )
                        sink.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise IntakeError("bad_zip", f"the ZIP archive cannot be read: {exc}") from exc


def _check_name(name: str) -> None:
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if (
        posix.is_absolute()
        or windows.is_absolute()
        or windows.drive
        or ".." in posix.parts
        or ".." in windows.parts
    ):
        raise IntakeError(
            "path_traversal", "the archive has an entry with an absolute path or '..'"
        )


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        if head[128:132] == b"DICM":
            return True
        ds = dcmread(path, force=True, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        return "SOPClassUID" in ds
    except (
        OSError,
        InvalidDicomError,
        ValueError,
        EOFError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
        struct_error,
    ):
        return False


def _is_dicomdir(path: Path) -> bool:
    if path.name.upper() == "DICOMDIR":
        return True
    try:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
        return str(meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY
    except (OSError, InvalidDicomError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        return False
