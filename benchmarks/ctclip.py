"""CT-CLIP cost on the 248-slice CT: preprocessing, forward and peak memory.

Weights of the real published shape with seeded random values (cost does not depend on them).
The reference row is a forward pass in float32 on the same device in the same process; other rows
are ratios against it. ``--before`` adds a forward pass with the encoder as first written (the
position-bias MLP run on every pair of grid cells, the quantiser's similarity matrix in one
piece, attention as explicit matmul and softmax), patched in here for the comparison.
Usage: ``python benchmarks/ctclip.py [--threads 2] [--repeat 2] [--before] [--bf16]``.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import random_ctclip
from inference.ctclip import model as ctclip_model
from inference.ctclip.analyzer import drop_unused
from inference.ctclip.model import CTCLIP
from inference.ctclip.preprocess import preprocess
from inference.ctclip.scoring import CTCLIPScorer
from inference.device import pick_device
from inference.loading import load_series

SERIES = (
    Path(__file__).resolve().parent.parent.parent / "shared/testdata/chest-ct-248-pneumonia-jpegll"
)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _bias_every_pair(self: Any, h: int, w: int, device: torch.device) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    grid = torch.stack((ys, xs), dim=-1).reshape(-1, 2)
    rel = (grid[:, None, :] - grid[None, :, :]).float()
    rel = torch.sign(rel) * torch.log(rel.abs() + 1)
    for layer in self.net:
        rel = layer(rel)
    return rel.permute(2, 0, 1)


def _quantise_at_once(self: Any, x: torch.Tensor) -> torch.Tensor:
    embed = self._codebook.embed[0]
    l2 = ctclip_model.l2norm
    sim = torch.matmul(l2(x.float()), l2(embed.float()).t())
    quantised: torch.Tensor = embed[sim.argmax(dim=-1)].to(x.dtype)
    return quantised


def _attention_explicit(
    self: Any, x: torch.Tensor, attn_bias: torch.Tensor | None = None
) -> torch.Tensor:
    b, n, _ = x.shape
    q = self.to_q(self.norm(x))
    k, v = self.to_kv(x).chunk(2, dim=-1)
    q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
    q = ctclip_model.l2norm(q) * self.q_scale
    k = ctclip_model.l2norm(k) * self.k_scale
    sim = torch.matmul(q, k.transpose(-1, -2)) * self.scale
    if attn_bias is not None:
        sim = sim + attn_bias.to(sim.dtype)
    out = torch.matmul(sim.softmax(dim=-1), v).transpose(1, 2).reshape(b, n, -1)
    return self.to_out(out)  # type: ignore[no-any-return]


@contextmanager
def first_written() -> Iterator[None]:
    """The encoder as first written, for the ``--before`` row."""
    patches: dict[type, Any] = {
        ctclip_model.ContinuousPositionBias: _bias_every_pair,
        ctclip_model.VectorQuantizer: _quantise_at_once,
        ctclip_model.Attention: _attention_explicit,
    }
    saved = {cls: getattr(cls, "forward") for cls in patches}  # noqa: B009
    for cls, forward in patches.items():
        setattr(cls, "forward", forward)  # noqa: B010
    try:
        yield
    finally:
        for cls, forward in saved.items():
            setattr(cls, "forward", forward)  # noqa: B010


def _timed(scorer: CTCLIPScorer, x: torch.Tensor, bf16: bool) -> tuple[float, torch.Tensor]:
    scorer.autocast_bf16 = bf16
    t0 = time.perf_counter()
    probs = scorer.probabilities_from_input(x)  # ends with a copy to the CPU: synchronised
    return time.perf_counter() - t0, probs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--before", action="store_true", help="also time the first version")
    parser.add_argument(
        "--bf16", action="store_true", help="also time bf16 autocast on the CPU (always on CUDA)"
    )
    args = parser.parse_args()
    if not SERIES.is_dir():
        print(f"skipped: {SERIES} is absent")
        return 0
    device = pick_device("auto", args.threads)
    model: CTCLIP = random_ctclip()
    with torch.no_grad():
        # a trained CLIP's temperature (exp = 100, the clamp CLIP training uses): random
        # logits then swing as far as real ones, so bf16's error shows at full size
        model.temperature.fill_(math.log(100.0))
    drop_unused(model)  # as the node runs it: prompt latents come from the cache
    latents = torch.nn.functional.normalize(torch.randn(36, 512), dim=-1)
    scorer = CTCLIPScorer(model, "ctclip", "v2", device, latents)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_model = peak_rss_gb()

    paths = sorted(p for p in SERIES.rglob("*") if p.is_file() and not p.name.startswith("."))
    t0 = time.perf_counter()
    volume = load_series(paths)
    t_load = time.perf_counter() - t0
    bf16 = device.type == "cuda" or args.bf16
    times: dict[str, list[float]] = {}
    worst_dp = 0.0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        x = preprocess(volume, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.setdefault("preprocess", []).append(time.perf_counter() - t0)
        secs, p32 = _timed(scorer, x, bf16=False)
        times.setdefault("forward fp32", []).append(secs)
        if bf16:
            secs, p16 = _timed(scorer, x, bf16=True)
            times.setdefault("forward bf16 autocast", []).append(secs)
            worst_dp = max(worst_dp, float((p16 - p32).abs().max()))
        t0 = time.perf_counter()
        scorer.autocast_bf16 = False  # the node's default
        scorer.probabilities_from_input(preprocess(volume, device=device))
        times.setdefault("preprocess + forward fp32", []).append(time.perf_counter() - t0)
        if args.before:
            with first_written():
                secs, p_before = _timed(scorer, x, bf16=False)
            times.setdefault("forward fp32, first version", []).append(secs)
            print(f"first version vs now max |dp| = {float((p_before - p32).abs().max()):.2e}")
    ref = min(times["forward fp32"])
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"device: {name}; torch {torch.__version__}; volume {volume.shape} -> {tuple(x.shape)}")
    if bf16:
        print(f"bf16 autocast vs fp32: max |dp| = {worst_dp:.2e} over 18 probabilities")
    print(f"{'step':<40}{'best s':>10}{'ratio':>8}")
    rows = [("load_series (reference I/O)", t_load), *((k, min(v)) for k, v in times.items())]
    for label, secs in rows:
        print(f"{label:<40}{secs:>10.2f}{secs / ref:>8.2f}")
    print(
        f"peak RSS after model build: {rss_model:.2f} GB; overall peak RSS: {peak_rss_gb():.2f} GB"
    )
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 1024**3:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
