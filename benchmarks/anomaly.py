"""Diffusion anomaly detector cost: network evaluations, a reduced slice, the full procedure.

The paper's networks at 256 x 256 (114 M-parameter UNet, 5.5 M classifier) with seeded random
weights (cost does not depend on them). The reference row is one UNet forward (batch 1) on
the same device in the same process; other rows are ratios against it. ``full`` is the card's
procedure (noise level 500 of 1000 steps: 998 UNet forwards and 499 classifier forward +
backward passes per slice) extrapolated from the measured evaluations, or measured with
``--measure-full`` (meant for a GPU); ``reduced`` runs the whole procedure on one slice with
``--reduced-steps`` respaced steps, as ``[neural.anomaly] mode = "reduced"`` does. Peak
memory is the process's resident set on the CPU, the allocator's peak on CUDA.
Usage: ``python benchmarks/anomaly.py [--threads 2] [--repeat 2] [--reduced-steps 10]
[--batch 1] [--measure-full]``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.anomaly.analyzer import reduced_spacing
from inference.anomaly.diffusion import (
    Schedule,
    anomaly_map,
    classifier_gradient,
    linear_betas,
    network_evaluations,
)
from inference.anomaly.model import Classifier, ClassifierConfig, UNet, UNetConfig

FULL_LEVEL = 500


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Best of ``repeat`` runs after one warm-up, in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--reduced-steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1, help="slices per batch")
    parser.add_argument("--measure-full", action="store_true", help="run the full procedure")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = UNet(UNetConfig()).to(device).eval()
    classifier = Classifier(ClassifierConfig()).to(device).eval()
    b = args.batch
    x = torch.rand(b, 1, 256, 256, device=device) * 2 - 1
    t = torch.full((b,), 400, dtype=torch.long, device=device)
    y = torch.zeros(b, dtype=torch.long, device=device)

    def denoise(v: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        return unet(v, ts, torch.zeros_like(ts))[:, :1]  # type: ignore[no-any-return]

    with torch.no_grad():
        unet_s = timed(lambda: unet(x, t, y), device, args.repeat)
    classifier_s = timed(lambda: classifier_gradient(classifier, x, t, 0), device, args.repeat)
    unets, classifiers = network_evaluations(FULL_LEVEL)
    full_s = unets * unet_s + classifiers * classifier_s
    rows = [
        ("UNet forward (reference)", unet_s),
        ("classifier forward + gradient", classifier_s),
        (f"full, extrapolated ({unets} UNet + {classifiers} classifier)", full_s),
    ]
    betas = linear_betas(1000)
    noise = torch.randn_like(x)
    reduced = Schedule.create(betas, reduced_spacing(1000, args.reduced_steps))
    level = max(2, round(reduced.steps * FULL_LEVEL / 1000))

    def run(schedule: Schedule, noise_level: int) -> None:
        anomaly_map(schedule, denoise, classifier, x, noise, noise_level=noise_level, scale=100.0)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reduced_s = timed(lambda: run(reduced, level), device, 1)
    ru, rc = network_evaluations(level)
    rows.append((f"reduced {args.reduced_steps} steps ({ru} UNet + {rc} classifier)", reduced_s))
    reduced_mb = peak_memory_mb(device)
    if args.measure_full:
        full = Schedule.create(betas)
        rows.append(("full, measured", timed(lambda: run(full, FULL_LEVEL), device, 1)))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"diffusion anomaly, 256x256, batch {b}, {name}")
    print(f"{'case':58s} {'s/batch':>9s} {'s/slice':>9s} {'ratio':>9s}")
    for label, seconds in rows:
        print(f"{label:58s} {seconds:9.3f} {seconds / b:9.3f} {seconds / unet_s:9.1f}")
    print(f"peak memory after the reduced run: {reduced_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
