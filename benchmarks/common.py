"""Shared by the benchmarks: test data locations, the synthetic 500-slice series, and peak
memory measured in a child process (so one case's allocations never inflate another's)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTDATA = REPO.parent / "shared" / "testdata"
REAL_CTS = {
    "chest CT 100 (LUNG, explicit LE)": TESTDATA / "chest-ct-100-lung",
    "chest CT 248 (JPEG lossless)": TESTDATA / "chest-ct-248-pneumonia-jpegll",
}


def synthetic_series(folder: Path, n: int = 500) -> list[Path]:
    """A 500-slice 512x512 axial series (0.625 mm), written in chunks to bound memory."""
    sys.path.insert(0, str(REPO))
    from pydicom.uid import generate_uid

    from tests.factory import ct_series, write_series

    study, series = generate_uid(), generate_uid()
    paths: list[Path] = []
    for start in range(0, n, 50):
        chunk = ct_series(
            min(50, n - start),
            512,
            512,
            seed=f"bench{start}",
            study_uid=study,
            series_uid=series,
            hu=lambda z, y, x: -1000.0 + ((x * 7 + y * 13 + z * 3) % 900),
            origin=(-180.0, -180.0, -300.0 + 0.625 * start),
            slice_spacing=0.625,
        )
        paths += write_series(chunk, folder / f"part{start:03d}")
    return paths


def in_child(script: Path, *args: str) -> dict[str, float]:
    """Run ``script --child ARGS`` and return the JSON it prints last."""
    result = subprocess.run(
        [sys.executable, str(script), "--child", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def peak_rss_mb(pids: Sequence[int]) -> float:
    """Sum of VmHWM over the receiver's processes (main process and workers)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (decoding pools, receiving processes)."""
    result = [pid]
    for child in children(pid):
        result += process_tree(child)
    return result
