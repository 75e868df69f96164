"""fVLM cost on the 248-slice CT: preprocessing, organ windows, encoder passes and peak memory.

Weights of the published shape (ViT-B, 92 M image-encoder parameters; the text encoder dropped as
the node runs it, prompt latents random unit vectors) with seeded random values: the cost does not
depend on them. The reference row is the quantitative analysis of the same volume in the same
process (what the node always runs, and what makes fVLM's lung mask); fVLM's rows are ratios
against it. Two cases: the node's lung mask alone (no TotalSegmentator weights: one lung window)
and four organs (the lung mask plus boxes standing in for TotalSegmentator's heart, esophagus and
aorta: four windows, three of one shape in one batch). Peak memory is measured in a child process
per case (``ru_maxrss``; on CUDA, the peak allocated).
Usage: ``python benchmarks/fvlm.py [--threads 2] [--repeat 2] [--device auto]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REAL_CTS, REPO
from inference.analyzer import Segmented
from inference.fvlm.analyzer import drop_text
from inference.fvlm.model import FVLM
from inference.fvlm.preprocess import label_volume, organ_windows, prepare
from inference.fvlm.scoring import FVLMScorer, pick_device
from inference.loading import load_series
from inference.quant import analyzer as quantitative
from inference.volume import Volume

SERIES = REAL_CTS["chest CT 248 (JPEG lossless)"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_fvlm(seed: int = 0) -> FVLM:
    """fVLM of the published shape with seeded random weights (uniform +-0.02, LayerNorms at
    their initial values), its text encoder dropped."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = FVLM()
    drop_text(model)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.uniform_(-0.02, 0.02)
        model.temp.fill_(0.07)
    return model.eval()


def organ_masks(volume: Volume, lungs: npt.NDArray[np.bool_]) -> dict[str, npt.NDArray[np.bool_]]:
    """The lung mask and boxes where a heart, an esophagus and an aorta sit in a chest CT
    (between the lungs, in their lower, back and middle parts): the windows' sizes and count
    are a real case's, the values do not matter to the cost."""
    z, y, x = (
        np.nonzero(lungs.any(axis=(1, 2)))[0],
        np.nonzero(lungs.any(axis=(0, 2)))[0],
        np.nonzero(lungs.any(axis=(0, 1)))[0],
    )
    z0, z1, y0, y1, x0, x1 = z[0], z[-1], y[0], y[-1], x[0], x[-1]
    dz, dy, dx = z1 - z0, y1 - y0, x1 - x0
    masks = {name: np.zeros(volume.shape, dtype=bool) for name in ("heart", "esophagus", "aorta")}
    masks["heart"][
        z0 : z0 + dz // 2, y0 + dy // 4 : y0 + 3 * dy // 4, x0 + dx // 3 : x1 - dx // 4
    ] = True
    cx = (x0 + x1) // 2
    masks["esophagus"][z0:z1, y0 + 2 * dy // 3 : y0 + 2 * dy // 3 + 15, cx - 8 : cx + 8] = True
    masks["aorta"][z0:z1, y0 + 3 * dy // 4 : y0 + 3 * dy // 4 + 25, cx + 10 : cx + 35] = True
    return {"lung": lungs & ~masks["heart"], **masks}


def child(case: str, threads: int, repeat: int, device_name: str) -> dict[str, Any]:
    """One case in this process: times of each step and the peak memory."""
    paths = sorted(p for p in SERIES.rglob("*") if p.is_file() and not p.name.startswith("."))
    device = pick_device(device_name, threads)
    t0 = time.perf_counter()
    volume = load_series(paths)
    times: dict[str, float] = {"load_series": time.perf_counter() - t0}
    t0 = time.perf_counter()
    quant = quantitative.QuantitativeAnalyzer(sharp_kernel=False).analyze(volume)
    times["quantitative analysis (reference)"] = time.perf_counter() - t0
    rss_before = peak_rss_mb()
    scorer = FVLMScorer(
        random_fvlm(), "bench", device, torch.nn.functional.normalize(torch.randn(32, 256), dim=-1)
    )
    segmented = Segmented(volume, quant.masks)
    masks = {"lung": segmented.lungs} if case == "lung" else organ_masks(volume, segmented.lungs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best: dict[str, float] = {}
    shapes: list[tuple[int, ...]] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        image, mask = prepare(volume, label_volume(masks), device)
        t1 = time.perf_counter()
        windows = organ_windows(image, mask)
        t2 = time.perf_counter()
        latents = scorer.latents(windows)
        probs = scorer.probabilities(latents)  # ends on the CPU: synchronised
        t3 = time.perf_counter()
        shapes = [tuple(w.image.shape[2:]) for w in windows]
        for key, secs in (
            ("prepare (resample, window HU, crop)", t1 - t0),
            ("organ windows", t2 - t1),
            ("encoder + organ heads fp32", t3 - t2),
            ("fVLM total", t3 - t0),
        ):
            best[key] = min(best.get(key, secs), secs)
        del image, mask, windows
    assert len(probs) == (11 if case == "lung" else 16)
    return {
        "times": {**times, **best},
        "windows": shapes,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_fvlm_mb": rss_before,
        "gpu_peak_gb": torch.cuda.max_memory_allocated() / 1024**3
        if device.type == "cuda"
        else None,
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU, {threads} threads",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--child", choices=("lung", "organs"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.repeat, args.device)))
        return 0
    if not SERIES.is_dir():
        print(f"skipped: {SERIES} is absent")
        return 0
    for case, title in (("lung", "lung only (node's lung mask)"), ("organs", "four organs")):
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                case,
                "--threads",
                str(args.threads),
                "--repeat",
                str(args.repeat),
                "--device",
                args.device,
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        out = json.loads(done.stdout.strip().splitlines()[-1])
        times = out["times"]
        ref = times["quantitative analysis (reference)"]
        print(f"\n{title}: {out['device']}; torch {torch.__version__}; windows {out['windows']}")
        print(f"{'step':<42}{'best s':>9}{'ratio':>8}")
        for label, secs in times.items():
            print(f"{label:<42}{secs:>9.2f}{secs / ref:>8.2f}")
        print(
            f"peak RSS before fVLM (volume + quantitative): {out['rss_before_fvlm_mb']:.0f} MB; "
            f"overall peak RSS: {out['peak_rss_mb']:.0f} MB"
        )
        if out["gpu_peak_gb"] is not None:
            print(f"peak GPU memory: {out['gpu_peak_gb']:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
