"""UID syntax (PS3.5 section 9) and the hashes that stand in for UIDs in names and logs."""

from __future__ import annotations

import hashlib
import re

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def uid_problem(value: object) -> str | None:
    """Why ``value`` is not a usable UID, or None when it is.

    PS3.5 9.1: digits and dots, at most 64 characters, no empty component. Components with
    a leading zero are invalid too, but some scanners write them and nothing downstream
    breaks, so they are accepted (``has_leading_zero`` lets callers log a warning).
    """
    if value is None:
        return "missing"
    text = str(value)
    if not text:
        return "empty"
    if len(text) > 64:
        return f"longer than 64 characters ({len(text)})"
    if not _UID.match(text):
        return "not digits separated by single dots"
    return None


def has_leading_zero(uid: str) -> bool:
    return any(len(part) > 1 and part.startswith("0") for part in uid.split("."))


def uid_hash(uid: str) -> str:
    """A short stable stand-in for a UID in logs (12 hex digits of its SHA-256)."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:12]


def name_hash(uid: str) -> str:
    """A file-name-safe stand-in for a UID (32 hex digits): names never carry DICOM values."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:32]
