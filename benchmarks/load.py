"""Load benchmark: series files -> HU volume, ctnode's loader against a plain
one-file-at-a-time pydicom loop (dcmread, pixel_array, rescale, stack in position order),
for the two real chest CTs and a synthetic 500-slice 512x512 series. Each measurement runs in
its own child process, so peak RSS is that case's alone.

    python benchmarks/load.py [--repeat 3] [--skip-synthetic]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REAL_CTS, in_child, synthetic_series


def plain_pydicom(paths: list[Path]) -> tuple[int, ...]:
    import numpy as np
    import pydicom

    datasets = [pydicom.dcmread(p) for p in paths]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    volume = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets]
    ).astype(np.int16)
    return tuple(volume.shape)


def ctnode(paths: list[Path]) -> tuple[int, ...]:
    from inference.loading import load_series

    return load_series(paths).shape


def child(loader: str, folder: str) -> None:
    paths = sorted(p for p in Path(folder).rglob("*.dcm"))
    start = time.perf_counter()
    shape = (ctnode if loader == "ctnode" else plain_pydicom)(paths)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": peak,
                "slices": shape[0],
                "volume_mb": shape[0] * shape[1] * shape[2] * 2 / 2**20,
            }
        )
    )


def main() -> int:
    if "--child" in sys.argv:
        child(sys.argv[2], sys.argv[3])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-synthetic", action="store_true")
    args = parser.parse_args()
    cases = {name: folder for name, folder in REAL_CTS.items() if folder.is_dir()}
    with tempfile.TemporaryDirectory(prefix="ctnode-bench-") as tmp:
        if not args.skip_synthetic:
            synthetic_series(Path(tmp) / "synthetic")
            cases["synthetic 500x512x512 (explicit LE)"] = Path(tmp) / "synthetic"
        rows = []
        for name, folder in cases.items():
            runs: dict[str, list[dict[str, float]]] = {"pydicom loop": [], "ctnode": []}
            for _ in range(args.repeat):
                for loader in ("pydicom", "ctnode"):
                    key = "ctnode" if loader == "ctnode" else "pydicom loop"
                    runs[key].append(in_child(Path(__file__), loader, str(folder)))
            reference = statistics.median(r["seconds"] for r in runs["pydicom loop"])
            for loader, results in runs.items():
                seconds = statistics.median(r["seconds"] for r in results)
                row = (
                    name,
                    loader,
                    seconds,
                    max(r["peak_mb"] for r in results),
                    results[0]["volume_mb"],
                    reference / seconds,
                )
                rows.append(row)
                print(_row(row), file=sys.stderr, flush=True)
    print("| series | loader | seconds | peak RSS MB | volume MB | speed-up vs pydicom loop |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(_row(row))
    return 0


def _row(row: tuple[object, ...]) -> str:
    name, loader, seconds, peak, volume, ratio = row
    return f"| {name} | {loader} | {seconds:.2f} | {peak:.0f} | {volume:.0f} | {ratio:.2f}x |"


if __name__ == "__main__":
    raise SystemExit(main())
