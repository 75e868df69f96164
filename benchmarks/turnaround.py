"""Turnaround benchmark: from the last instance acknowledged to the SR stored at the PACS.

For each real chest CT: start DCMTK storescp as the PACS and ``ctnode serve`` (defaults, one
worker) with that PACS as its destination; push the CT with storescu; time from storescu's
exit (every instance acknowledged) to the SR file appearing at the PACS, minus the
configured stable age (the wait that defines "complete"). The stages come from the node's
own records: load, analyse and report from the job's timings, send from the result row to
the last delivery; "wait" is the rest (assembly tick, worker poll, outbox tick). Peak RSS is
the sum of VmHWM over the node's process tree (main process and decoding pool).

    python benchmarks/turnaround.py [--repeat 1] [--stable-age 2] [--ctclip]

``--ctclip`` runs the node with both CT-CLIP analyzers (zero-shot and ClassFine, sharing one
encoder), registered from generated weights of the published shape.

Target on 2 cores: under 20 s for the 248-slice CT (the system ctnode grew from quotes 5-10
minutes on CPU and 30-60 s on GPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import REAL_CTS, ctclip_store, peak_rss_mb, process_tree  # noqa: E402
from tests.node_process import NodeProcess, Pacs  # noqa: E402

SR_PREFIX = "SR"  # storescp names files by modality and SOP Instance UID
STAGES = ("load", "analyse", "report", "send", "wait")


def run_case(
    folder: Path, workdir: Path, stable_age: float, weights: Path | None = None
) -> dict[str, float]:
    pacs = Pacs(workdir / "pacs").start()
    extra = {"NEURAL__WEIGHTS_DIR": str(weights)} if weights else {}
    node = NodeProcess(
        workdir / "var",
        **extra,
        ASSEMBLY__STABLE_AGE=str(stable_age),
        ASSEMBLY__TICK="0.25",
        WORKER__POLL="0.25",
        OUTBOX__TICK="0.25",
        DESTINATIONS=json.dumps([pacs.destination]),
    ).start()
    try:
        assert node.proc is not None
        subprocess.run(
            ["storescu", "-xs", "-aec", "CTNODE", "127.0.0.1", str(node.port)]
            + [str(p) for p in sorted(folder.glob("*.dcm"))],
            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
            check=True,
            capture_output=True,
        )
        acknowledged = time.time()
        peak = 0.0
        while not any(p.name.startswith(SR_PREFIX) for p in pacs.folder.iterdir()):
            peak = max(peak, peak_rss_mb(process_tree(node.proc.pid)))
            if time.time() - acknowledged > 600:
                raise RuntimeError("no SR at the PACS after 10 minutes")
            time.sleep(0.05)
        arrived = time.time()
        peak = max(peak, peak_rss_mb(process_tree(node.proc.pid)))
        stages = _stages(node.data_dir / "index.sqlite", arrived)
    finally:
        node.stop()
        pacs.stop()
    total = arrived - acknowledged - stable_age
    stages["wait"] = total - sum(stages.values())
    return {"turnaround": total, **stages, "peak_rss_mb": peak}


def _stages(database: Path, arrived: float) -> dict[str, float]:
    with sqlite3.connect(database) as conn:
        timings_json, created = conn.execute(
            "SELECT timings_json, created FROM results ORDER BY job_id DESC LIMIT 1"
        ).fetchone()
    timings = json.loads(timings_json)
    recorded = datetime.fromisoformat(created).timestamp()
    return {
        "load": timings.get("load", 0.0),
        "analyse": timings.get("analyse", 0.0),
        "report": timings.get("report", 0.0),
        "send": max(0.0, arrived - recorded),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per CT (median shown)")
    parser.add_argument("--stable-age", type=float, default=2.0)
    parser.add_argument("--ctclip", action="store_true", help="with both CT-CLIP analyzers")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="ctnode-weights-")
    weights = ctclip_store(Path(scratch.name)) if args.ctclip else None
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: install dcmtk", file=sys.stderr)
            return 2
    rows = []
    for name, folder in REAL_CTS.items():
        if not folder.is_dir():
            print(f"{folder} absent: skipping {name}", file=sys.stderr)
            continue
        runs = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="ctnode-turnaround-") as tmp:
                runs.append(run_case(folder, Path(tmp), args.stable_age, weights))
            print(name, json.dumps({k: round(v, 2) for k, v in runs[-1].items()}), file=sys.stderr)
        rows.append((name, {k: statistics.median(r[k] for r in runs) for k in runs[0]}))
    header = ("series", "turnaround s", *(f"{s} s" for s in STAGES), "peak RSS MB")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name, r in rows:
        cells = [f"{r['turnaround']:.1f}", *(f"{r[s]:.1f}" for s in STAGES)]
        print(f"| {name} | " + " | ".join(cells) + f" | {r['peak_rss_mb']:.0f} |")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
