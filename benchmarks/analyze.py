"""Analysis benchmark: wall time and peak RSS of the quantitative analysis (segmentation,
densitometry, nodule candidates, findings, fusion) after loading, for the two real chest CTs
and a synthetic 500-slice 512x512 series. Each case runs in its own child process; loading
is timed separately and not counted.

    python benchmarks/analyze.py [--repeat 3] [--skip-synthetic]
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


def child(folder: str, sharp: str) -> None:
    from inference import ensemble
    from inference.loading import load_series

    paths = sorted(Path(folder).rglob("*.dcm"))
    start = time.perf_counter()
    volume = load_series(paths)
    loaded = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    analysis = ensemble.Ensemble().run(volume, sharp_kernel=sharp == "sharp")
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "load_s": loaded - start,
                "analyse_s": done - loaded,
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_after_load_mb": before,
                "slices": volume.shape[0],
                "score": analysis.fusion.probability_of_pathology,
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
    cases = {
        name: (folder, "sharp" if "LUNG" in name else "soft")
        for name, folder in REAL_CTS.items()
        if folder.is_dir()
    }
    with tempfile.TemporaryDirectory(prefix="ctnode-bench-") as tmp:
        if not args.skip_synthetic:
            synthetic_series(Path(tmp) / "synthetic")
            cases["synthetic 500x512x512"] = (Path(tmp) / "synthetic", "soft")
        rows = []
        for name, (folder, kernel) in cases.items():
            runs = [in_child(Path(__file__), str(folder), kernel) for _ in range(args.repeat)]
            row = (
                name,
                kernel,
                statistics.median(r["analyse_s"] for r in runs),
                max(r["peak_mb"] for r in runs),
                statistics.median(r["load_s"] for r in runs),
            )
            rows.append(row)
            print(_row(row), file=sys.stderr, flush=True)
    print("| series | kernel class | analysis s (after loading) | peak RSS MB | load s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(_row(row))
    return 0


def _row(row: tuple[object, ...]) -> str:
    name, kernel, seconds, peak, load = row
    return f"| {name} | {kernel} | {seconds:.1f} | {peak:.0f} | {load:.1f} |"


if __name__ == "__main__":
    raise SystemExit(main())
