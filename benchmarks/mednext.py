"""MedNeXt cost on the CPU: inference time and peak memory per variant at the card's input
size, and training throughput (volumes per second) for the tiny and B variants.

Generated weights (the cost does not depend on their values). Every row runs in a child
process of its own, so each peak RSS is that variant's alone; the reference rows (B for
inference, B for training) run in the same invocation and the others are ratios against
them. On a CUDA device (when present) the same rows run there and peak GPU memory is given.
Usage: ``python benchmarks/mednext.py [--threads 2] [--repeat 2] [--kernel 3]
[--variants S B M L] [--train-size 64 96 96] [--train-steps 3]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import in_child
from inference.mednext.card import DEFAULT_LABELS, Architecture, ModelCard, Preprocessing

SCRIPT = Path(__file__).resolve()
# The tiny variant of the training test (tests.mednext_synthetic) at its input size.
TINY = Architecture(n_channels=4, exp_r=(2,) * 9, block_counts=(1,) * 9)
TINY_SIZE = (16, 32, 32)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _card(variant: str, kernel: int, size: tuple[int, int, int]) -> ModelCard:
    return ModelCard(
        name=f"bench-{variant}",
        version="1",
        labels=DEFAULT_LABELS,
        thresholds=(0.5,) * len(DEFAULT_LABELS),
        variant="custom" if variant == "tiny" else variant,
        kernel_size=kernel,
        preprocessing=Preprocessing(input_size=size),
        architecture=TINY if variant == "tiny" else None,
    )


def child_infer(variant: str, kernel: int, threads: int, repeat: int) -> dict[str, float]:
    """Forward passes of one variant at the card's input size; preprocessing of a CT-sized
    volume (300 x 512 x 512) once, as the analyzer runs it."""
    import numpy as np
    import torch

    from inference.ctclip.scoring import pick_device
    from inference.mednext.model import classifier_for
    from inference.mednext.preprocess import preprocess

    device = pick_device(threads)
    card = _card(variant, kernel, Preprocessing().input_size)
    model = classifier_for(card).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    rss_model = peak_rss_gb()
    voxels = np.full((300, 512, 512), -900, dtype=np.int16)
    lungs = np.zeros(voxels.shape, dtype=bool)
    lungs[30:270, 100:400, 60:450] = True
    t0 = time.perf_counter()
    x = preprocess(voxels, (1.0, 0.7, 0.7), lungs, card.preprocessing, device)
    t_pre = time.perf_counter() - t0
    del voxels, lungs
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.no_grad():
        for _ in range(repeat):
            t0 = time.perf_counter()
            torch.sigmoid(model(x[None])).cpu()
            times.append(time.perf_counter() - t0)
    gpu = torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else 0.0
    return {
        "params": params,
        "preprocess_s": t_pre,
        "forward_s": min(times),
        "rss_model_gb": rss_model,
        "peak_rss_gb": peak_rss_gb(),
        "peak_gpu_gb": gpu,
    }


def child_train(
    variant: str, kernel: int, threads: int, size: tuple[int, int, int], steps: int
) -> dict[str, float]:
    """Optimisation steps (batch 2, the training loop's step: BCE with class weights, AdamW,
    mixed precision on CUDA) on random inputs of ``size``; the first step is not timed."""
    import torch
    from torch import nn

    from inference.ctclip.scoring import pick_device
    from inference.mednext.model import classifier_for
    from training.mednext.loop import Step

    device = pick_device(threads)
    card = _card(variant, kernel, size)
    model = classifier_for(card).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = Step(model, optimizer, nn.BCEWithLogitsLoss(), device, amp=True)
    x = torch.randn(2, 1, *size)
    y = (torch.rand(2, len(card.labels)) > 0.5).float()
    step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)  # returns the loss as a float: synchronised
    seconds = time.perf_counter() - t0
    gpu = torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else 0.0
    return {"volumes_per_s": 2 * steps / seconds, "peak_rss_gb": peak_rss_gb(), "peak_gpu_gb": gpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--kernel", type=int, choices=(3, 5), default=3)
    parser.add_argument("--variants", nargs="+", default=["S", "B", "M", "L"])
    parser.add_argument("--train-size", type=int, nargs=3, default=[64, 96, 96])
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, variant, *rest = args.child
        if kind == "infer":
            result = child_infer(variant, args.kernel, args.threads, args.repeat)
        else:
            size = tuple(int(n) for n in rest)
            result = child_train(variant, args.kernel, args.threads, size, args.train_steps)  # type: ignore[arg-type]
        print(json.dumps(result))
        return 0

    common = ["--threads", str(args.threads), "--repeat", str(args.repeat)]
    common += ["--kernel", str(args.kernel), "--train-steps", str(args.train_steps)]
    size = Preprocessing().input_size
    order = ["B", *(v for v in args.variants if v != "B")]
    infer = {v: in_child(SCRIPT, "infer", v, *common) for v in order}
    ref = infer["B"]
    print(f"inference, CPU {args.threads} threads, input {size}, kernel {args.kernel}")
    print(f"preprocessing (300 x 512 x 512 CT to the input): {ref['preprocess_s']:.2f} s")
    head = (
        f"{'variant':<8}{'params':>12}{'forward s':>11}{'ratio':>7}{'peak RSS GB':>13}{'ratio':>7}"
    )
    print(head + (f"{'GPU GB':>8}" if ref["peak_gpu_gb"] else ""))
    for v in args.variants:
        row = infer[v]
        line = (
            f"{v:<8}{row['params']:>12,.0f}{row['forward_s']:>11.2f}"
            f"{row['forward_s'] / ref['forward_s']:>7.2f}{row['peak_rss_gb']:>13.2f}"
            f"{row['peak_rss_gb'] / ref['peak_rss_gb']:>7.2f}"
        )
        print(line + (f"{row['peak_gpu_gb']:>8.2f}" if ref["peak_gpu_gb"] else ""))

    train_size = tuple(args.train_size)
    rows = {
        "B": in_child(SCRIPT, "train", "B", *map(str, train_size), *common),
        "tiny": in_child(SCRIPT, "train", "tiny", *map(str, TINY_SIZE), *common),
    }
    print(f"training (batch 2, {args.train_steps} timed steps)")
    print(f"{'variant':<8}{'input':>16}{'volumes/s':>11}{'ratio':>7}{'peak RSS GB':>13}")
    for v, shape in (("B", train_size), ("tiny", TINY_SIZE)):
        row = rows[v]
        ratio = row["volumes_per_s"] / rows["B"]["volumes_per_s"]
        dims = "x".join(map(str, shape))
        print(
            f"{v:<8}{dims:>16}{row['volumes_per_s']:>11.2f}{ratio:>7.2f}{row['peak_rss_gb']:>13.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
