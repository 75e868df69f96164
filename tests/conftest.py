"""Fixtures shared by every test layer: real-data locations and synthetic series."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TESTDATA = SHARED / "testdata"
MODELS = SHARED / "models"

# Hypothesis (the fuzz tests): a bounded run by default, the whole fuzz file well under a
# minute; ``CTNODE_FUZZ=1`` (``make fuzz``) runs many more examples, for local runs:
# CTNODE_FUZZ_EXAMPLES a test (10,000 unless set: some ten minutes on an idle machine).
settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("CTNODE_FUZZ_EXAMPLES", "10000")), deadline=None
)
settings.load_profile("fuzz" if os.environ.get("CTNODE_FUZZ") else "ci")


def testdata(name: str) -> Path:
    """A folder of ``../shared/testdata``, or skip the test saying what is missing."""
    path = TESTDATA / name
    if not path.is_dir():
        pytest.skip(f"real test data {path} is absent (see ../shared/testdata/README.md)")
    return path


testdata.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def ctnode_command(*args: str) -> list[str]:
    """Argv that runs this checkout's ``ctnode`` (``python -m cli``) in a subprocess."""
    return [sys.executable, "-m", "cli", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a ``ctnode`` subprocess that imports this checkout's packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTNODE_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
