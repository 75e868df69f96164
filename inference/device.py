"""Where a neural model runs: one rule for every analyzer, training and the benchmarks, so
``[neural] device`` means the same thing to all of them."""

from __future__ import annotations

import torch


def pick_device(wanted: str = "auto", threads: int = 0) -> torch.device:
    """``auto`` (or empty): CUDA when present, else the CPU; or the device named (``cpu``,
    ``cuda``, ``cuda:1``), refused with the reason when it is not there. On the CPU,
    ``threads`` intra-op threads when given (0 leaves torch's choice)."""
    if wanted in ("", "auto"):
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(wanted)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"[neural] device = {wanted!r} but no CUDA device is present")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"[neural] device = {wanted!r}: only {torch.cuda.device_count()} GPUs")
    if device.type == "cpu" and threads > 0:
        torch.set_num_threads(threads)
    return device
