"""Why a series cannot be analysed: a reason code (stable, for the database, metrics and
the legacy JSON) and a sentence for people."""

from __future__ import annotations

from typing import Any

NOT_CT = "not_ct"
LOCALIZER_ONLY = "localizer_only"
NOT_ORIGINAL = "not_original"
TOO_FEW_SLICES = "too_few_slices"
INCONSISTENT_GEOMETRY = "inconsistent_geometry"
MISSING_POSITION = "missing_position"
DUPLICATE_POSITION = "duplicate_position"
GAP = "gap"
GANTRY_TILT = "gantry_tilt"
NON_AXIAL = "non_axial"
TRUNCATED_PIXEL_DATA = "truncated_pixel_data"
UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
UNREADABLE = "unreadable"
NOT_CHEST = "not_chest"
NO_SERIES = "no_series"


class InvalidSeries(Exception):
    """A series (or study) that cannot be analysed, and why."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


class IntakeError(Exception):
    """Input that is not a usable archive, folder or DICOMDIR (reason code + sentence)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
