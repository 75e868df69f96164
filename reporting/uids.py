"""Deterministic output UIDs, so re-running an analysis reproduces the same DICOM objects.

A UID is derived under the ``2.25`` root (ISO/IEC 9834-8, DICOM PS3.5 B.2) from a SHA-256 of
the analysed series UID, its sorted SOP Instance UIDs, the analyzer versions and the object
kind (e.g. ``"sr"``, ``"sc-series"``, ``"key-3"``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _digest_uid(*parts: str) -> str:
    h = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return "2.25." + str(int.from_bytes(h[:16], "big"))


def instance_set_digest(sop_instance_uids: Iterable[str]) -> str:
    """A digest of the instance set that does not depend on input order."""
    return hashlib.sha256("\n".join(sorted(sop_instance_uids)).encode("ascii")).hexdigest()


def output_uid(
    series_uid: str,
    sop_instance_uids: Iterable[str],
    analyzer_versions: Iterable[tuple[str, str]],
    kind: str,
) -> str:
    """The UID of output object ``kind`` for this series, instance set and analyzer versions."""
    versions = ";".join(f"{a}={v}" for a, v in sorted(analyzer_versions))
    return _digest_uid(series_uid, instance_set_digest(sop_instance_uids), versions, kind)


def device_uid(name: str) -> str:
    """A stable UID for the node as an observer device (TID 1004)."""
    return _digest_uid("ctnode-device", name)
