"""CT-CLIP cost on the 248-slice CT: preprocessing, forward and peak memory.

Weights of the real published shape with seeded random values (cost does not depend on them).
The reference row is a forward pass in float32 on the same device in the same process; other rows
are ratios against it. Usage: ``python benchmarks/ctclip.py [--threads 2] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.ctclip.model import CTCLIP
from inference.ctclip.preprocess import preprocess
from inference.ctclip.scoring import CTCLIPScorer, pick_device
from inference.loading import load_series

SERIES = (
    Path(__file__).resolve().parent.parent.parent / "shared/testdata/chest-ct-248-pneumonia-jpegll"
)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if not SERIES.is_dir():
        print(f"skipped: {SERIES} is absent")
        return 0
    device = pick_device(args.threads)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = CTCLIP()
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.02, 0.02)
        emb = model.visual_transformer.vq._codebook.embed
        emb.copy_(torch.nn.functional.normalize(torch.randn_like(emb), dim=-1))
    latents = torch.nn.functional.normalize(torch.randn(36, 512), dim=-1)
    scorer = CTCLIPScorer(model, "ctclip", "v2", device, latents)
    rss_model = peak_rss_gb()

    paths = sorted(p for p in SERIES.rglob("*") if p.is_file() and not p.name.startswith("."))
    t0 = time.perf_counter()
    volume = load_series(paths)
    t_load = time.perf_counter() - t0
    pre, fwd, fwd_bf16 = [], [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        x = preprocess(volume)
        pre.append(time.perf_counter() - t0)
        scorer.autocast_bf16 = False
        t0 = time.perf_counter()
        p32 = scorer.probabilities_from_input(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        fwd.append(time.perf_counter() - t0)
        if device.type == "cuda":
            scorer.autocast_bf16 = True
            t0 = time.perf_counter()
            p16 = scorer.probabilities_from_input(x)
            torch.cuda.synchronize()
            fwd_bf16.append(time.perf_counter() - t0)
            print(f"bf16 vs fp32 max |dp| = {float((p16 - p32).abs().max()):.2e}")
    ref = min(fwd)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"device: {name}; torch {torch.__version__}; volume {volume.shape} -> {tuple(x.shape)}")
    print(f"{'step':<28}{'best s':>10}{'ratio':>8}")
    rows = [
        ("load_series (reference I/O)", t_load),
        ("preprocess", min(pre)),
        ("forward fp32", ref),
    ]
    if fwd_bf16:
        rows.append(("forward bf16 autocast", min(fwd_bf16)))
    for label, secs in rows:
        print(f"{label:<28}{secs:>10.2f}{secs / ref:>8.2f}")
    print(
        f"peak RSS after model build: {rss_model:.2f} GB; overall peak RSS: {peak_rss_gb():.2f} GB"
    )
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 1024**3:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
