"""A weights store holding generated diffusion anomaly checkpoints of a tiny architecture:
the original's file layout (two plain state dicts, the UNet and its classifier) and a card
that names the tiny networks in the original's constructor arguments, registered as a site
registers the ones it trained (``ctnode weights register --companion --card``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from inference import weights_store as weights
from inference.anomaly.model import Classifier, ClassifierConfig, UNet, UNetConfig

# The tiny reference's shapes (32 x 32, width 32, two levels), in the original's arguments.
UNET: dict[str, Any] = {
    "image_size": 32,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": "1,2",
    "attention_resolutions": "16",
    "num_heads": 1,
    "num_head_channels": -1,
    "class_cond": True,
    "learn_sigma": True,
    "use_scale_shift_norm": False,
    "resblock_updown": False,
}
CLASSIFIER: dict[str, Any] = {
    "image_size": 32,
    "in_channels": 1,
    "model_channels": 32,
    "out_channels": 2,
    "num_res_blocks": 1,
    "attention_resolutions": [2],
    "channel_mult": [1, 2],
    "num_head_channels": 64,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "pool": "attention",
}
CARD: dict[str, Any] = {
    "image_size": 32,
    "hu_window": [-1000, 400],
    "diffusion_steps": 1000,
    "noise_level": 500,
    "guidance_scale": 100.0,
    "percentile": 99.0,
    "threshold": 0.2,
    "map_threshold": 0.3,
    "unet": UNET,
    "classifier": CLASSIFIER,
}


def tiny_states(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Seeded weights: every parameter drawn small, so the denoiser's output is not the
    zero a freshly initialised original gives (its output layers start at zero)."""
    gen = torch.Generator().manual_seed(seed)
    unet = UNet(UNetConfig.from_original(UNET))
    classifier = Classifier(ClassifierConfig.from_original(CLASSIFIER))
    states = []
    for model in (unet, classifier):
        states.append(
            {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in model.state_dict().items()}
        )
    return states[0], states[1]


def make_store(store: Path, *, seed: int = 5) -> Path:
    """Write and register ``tiny-diffusion-anomaly``: the UNet, the classifier, the card."""
    store.mkdir(parents=True, exist_ok=True)
    unet, classifier = tiny_states(seed)
    torch.save(unet, store / "model_tiny.pt")
    torch.save(classifier, store / "modelclass_tiny.pt")
    (store / "card_tiny.json").write_text(json.dumps(CARD), encoding="utf-8")
    weights.register(
        store,
        store / "model_tiny.pt",
        name="tiny-diffusion-anomaly",
        analyzer="diffusion-anomaly",
        companion=store / "modelclass_tiny.pt",
        card=store / "card_tiny.json",
    )
    return store
