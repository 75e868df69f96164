"""Fixtures shared by every test layer: real-data locations and synthetic series."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TESTDATA = SHARED / "testdata"
MODELS = SHARED / "models"


def testdata(name: str) -> Path:
    """A folder of ``../shared/testdata``, or skip the test saying what is missing."""
    path = TESTDATA / name
    if not path.is_dir():
        pytest.skip(f"real test data {path} is absent (see ../shared/testdata/README.md)")
    return path
