"""What the neural analyzers' node tests share: settings pointing at a test weights store,
``ctnode weights`` run as a site runs it, and the text an SR carries (where the neural
scores and their notes are written)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pydicom

import config
from tests.conftest import ctnode_command, subprocess_env

TEXT_KEYWORDS = {"TextValue", "CodeValue", "CodeMeaning", "AlgorithmVersion"}


def settings_for(store: Path, **anomaly: object) -> config.Settings:
    """The default settings with ``store`` as the weights store (and ``[neural.anomaly]``
    keys for the anomaly detector's modes)."""
    base = config.load(None, {})
    neural = dataclasses.replace(
        base.neural,
        weights_dir=str(store),
        anomaly=dataclasses.replace(base.neural.anomaly, **anomaly),  # type: ignore[arg-type]
    )
    return dataclasses.replace(base, neural=neural)


def sr_texts(sr: Path | pydicom.Dataset) -> set[str]:
    """Every text value, code value and meaning, and algorithm version in an SR."""
    dataset = sr if isinstance(sr, pydicom.Dataset) else pydicom.dcmread(sr)
    return {str(e.value) for e in dataset.iterall() if e.keyword in TEXT_KEYWORDS}


def weights_cli(store: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``ctnode weights --store STORE ARGV...`` in a subprocess, its output captured."""
    return subprocess.run(
        ctnode_command("weights", "--store", str(store), *argv),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
