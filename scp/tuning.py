"""Where pynetdicom spends an SCP's time, and the changes that take it back.

Measured with py-spy on ``ctnode serve`` receiving the 100-slice chest CT from DCMTK's
storescu (see ``benchmarks/ingest.py``):

- Each new association deep-copies the acceptor's presentation contexts. With every
  storage SOP class accepted (the ``discard`` policy) that is ~7000 UID objects rebuilt one
  by one, about 0.2 s per association: more than a third of the time of a 100-instance
  push. The contexts are never mutated apart from their lists, so a shallow copy of each
  context (fresh transfer-syntax list, shared immutable UIDs) is equivalent.
- pydicom validates every value set on or read from a Dataset with regular expressions
  (command sets, file meta, headers): ~15 % of the time. The node checks the values it relies
  on itself (``scp.validation``), so the service turns pydicom's checks off
  (``quiet_pydicom_validation``); tests keep them on.
"""

from __future__ import annotations

import copy
from typing import Any

import pydicom.config
import pynetdicom.transport
from pynetdicom.presentation import PresentationContext


def _copy_contexts(value: Any, memo: dict[int, Any] | None = None) -> Any:
    if isinstance(value, list) and all(isinstance(cx, PresentationContext) for cx in value):
        copies = []
        for cx in value:
            duplicate = copy.copy(cx)
            duplicate._transfer_syntax = list(cx._transfer_syntax)
            copies.append(duplicate)
        return copies
    return copy.deepcopy(value, memo)


def fast_context_copy() -> None:
    """Make pynetdicom copy supported presentation contexts shallowly per association."""
    pynetdicom.transport.deepcopy = _copy_contexts  # type: ignore[attr-defined,assignment]


def quiet_pydicom_validation() -> None:
    """Skip pydicom's per-value regex validation in the long-running service."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
