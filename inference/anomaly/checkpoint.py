"""Strict loading of the original's checkpoints: plain state dicts of the diffusion UNet
(``model*.pt``) and of the classifier (``modelbratsclass*.pt``-style), diffusion-anomaly.md
"Checkpoints". Every key and shape must match our modules; a file of the other network, a
training checkpoint or another architecture fails with the keys that differ."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from inference.anomaly.model import Classifier, ClassifierConfig, UNet, UNetConfig
from inference.strict import CheckpointError, check_layout


def read_state(path: Path) -> dict[str, Tensor]:
    """The tensors of ``path`` (tensors only: ``weights_only``; memory-mapped)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError("unreadable", f"{path.name}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError("not-a-state-dict", f"{path.name} is not a plain state dict")
    return state


def load_state(model: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Load ``state`` strictly into ``model`` (as float32), naming what does not match;
    ``model`` may be on the meta device: its tensors become the file's."""
    own = model.state_dict()
    check_layout(own, state, what)
    tensors = {k: v.float().contiguous() for k, v in state.items()}
    model.load_state_dict(tensors, strict=True, assign=True)


def load_unet(path: Path, cfg: UNetConfig) -> UNet:
    """The UNet of ``path``, built on the meta device (no random initialisation of 114 M
    parameters only to overwrite them) and given the file's tensors."""
    with torch.device("meta"):
        model = UNet(cfg)
    load_state(model, read_state(path), f"diffusion UNet {path.name}")
    return model.eval()


def load_classifier(path: Path, cfg: ClassifierConfig) -> Classifier:
    with torch.device("meta"):
        model = Classifier(cfg)
    load_state(model, read_state(path), f"classifier {path.name}")
    return model.eval()
