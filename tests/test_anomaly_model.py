"""The diffusion anomaly detector's networks and procedure held to the original: every tensor
of the tiny numerical reference, the schedule's respacing, and the paper's full-size layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="torch (the 'neural' extra) is not installed")

import numpy as np
import torch

from inference.anomaly.checkpoint import load_classifier, load_unet
from inference.anomaly.diffusion import (
    Schedule,
    anomaly_map,
    classifier_gradient,
    linear_betas,
    q_sample,
    space_timesteps,
)
from inference.anomaly.model import Classifier, ClassifierConfig, UNet, UNetConfig
from inference.strict import CheckpointError
from tests.conftest import MODELS

TINY = MODELS / "diffusion-anomaly-tiny-reference"
TOL = 1e-4
Tiny = tuple[UNet, Classifier, dict[str, Any], dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    if not TINY.is_dir():
        pytest.skip(f"tiny reference {TINY} is absent (see ../shared/models)")
    raw = json.loads((TINY / "tiny_config.json").read_text())
    unet = load_unet(TINY / "tiny_unet_state_dict.pt", UNetConfig.from_original(raw["unet"]))
    classifier = load_classifier(
        TINY / "tiny_classifier_state_dict.pt", ClassifierConfig.from_original(raw["classifier"])
    )
    ref = torch.load(TINY / "tiny_reference.pt", weights_only=True)
    return unet, classifier, raw, ref


def _close(ours: torch.Tensor, theirs: torch.Tensor, name: str) -> None:
    assert ours.shape == theirs.shape, name
    diff = (ours - theirs).abs().max().item()
    assert diff < TOL, f"{name}: max abs diff {diff}"


def test_tiny_reference_every_tensor(tiny: Tiny) -> None:
    unet, classifier, raw, ref = tiny
    expected = {
        "input",
        "input_y",
        "input_t",
        "input_q_noise",
        "unet_output_t7",
        "classifier_logits_t7",
        "x_after_q_sample",
        "x_encoded",
        "healthy_reconstruction",
        "anomaly_map",
    }
    assert set(ref) == expected, "the reference holds tensors this test does not compare"
    assert ref["input_y"].tolist() == [0] and ref["input_t"].tolist() == [7]
    assert raw["ddim_eta"] == 0.0 and raw["clip_denoised"] is True
    schedule = Schedule.create(raw["betas"], raw["unet"]["timestep_respacing"])
    np.testing.assert_allclose(schedule.betas, linear_betas(raw["unet"]["diffusion_steps"]))
    x, t, y = ref["input"], ref["input_t"], ref["input_y"]
    with torch.no_grad():
        _close(unet(x, t, y), ref["unet_output_t7"], "unet_output_t7")
        _close(classifier(x, t), ref["classifier_logits_t7"], "classifier_logits_t7")
    _close(q_sample(schedule, x, 0, ref["input_q_noise"]), ref["x_after_q_sample"], "q_sample")

    def denoise(v: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        return unet(v, ts, torch.zeros_like(ts))[:, :1]  # type: ignore[no-any-return]

    trace = anomaly_map(
        schedule,
        denoise,
        classifier,
        x,
        ref["input_q_noise"],
        noise_level=raw["noise_level"],
        scale=raw["classifier_scale"],
        clip=raw["clip_denoised"],
    )
    _close(trace.noised, ref["x_after_q_sample"], "x_after_q_sample")
    _close(trace.encoded, ref["x_encoded"], "x_encoded")
    _close(trace.healthy, ref["healthy_reconstruction"], "healthy_reconstruction")
    _close(trace.anomaly, ref["anomaly_map"], "anomaly_map")

    # the guidance is part of what is compared: without it the reconstruction differs
    unguided = anomaly_map(
        schedule, denoise, None, x, ref["input_q_noise"], noise_level=5, scale=0.0
    )
    assert (unguided.healthy - ref["healthy_reconstruction"]).abs().max().item() > 1e-3


def test_the_gradient_points_to_the_healthy_class(tiny: Tiny) -> None:
    _, classifier, _, ref = tiny
    x, t = ref["input"], ref["input_t"]
    grad = classifier_gradient(classifier, x, t, 0)
    with torch.no_grad():
        before = torch.log_softmax(classifier(x, t), -1)[0, 0]
        after = torch.log_softmax(classifier(x + 0.1 * grad / grad.norm(), t), -1)[0, 0]
    assert after > before


def test_respacing_keeps_the_original_noise_levels() -> None:
    assert space_timesteps(1000, "ddim1000") == list(range(1000))
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(10, "3") == [0, 4, 9]
    assert space_timesteps(100, "2,3") == [0, 49, 50, 74, 99]
    with pytest.raises(ValueError, match="integer stride"):
        space_timesteps(1000, "ddim999")
    betas = linear_betas(1000)
    spaced = Schedule.create(betas, "ddim50")
    full = np.cumprod(1.0 - betas)
    np.testing.assert_allclose(spaced.alphas_cumprod, full[list(range(0, 1000, 20))])
    assert spaced.timesteps[3] == 60 and spaced.steps == 50


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_papers_networks_have_the_published_sizes() -> None:
    with torch.device("meta"):
        unet, classifier = UNet(UNetConfig()), Classifier(ClassifierConfig())
    assert round(_count(unet) / 1e6) == 114  # "about 114 M parameters"
    assert round(_count(classifier) / 1e5) == 55  # "about 5.5 M"
    keys = set(unet.state_dict())
    assert "input_blocks.0.0.weight" in keys and "label_emb.weight" in keys
    assert "middle_block.1.qkv.weight" in keys and "out.2.weight" in keys
    assert classifier.state_dict()["out.2.positional_embedding"].shape == (128, 65)


def test_full_shape_checkpoints_load_strictly(tmp_path: Path) -> None:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Classifier(ClassifierConfig()).state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    state = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    torch.save(state, tmp_path / "modelbratsclass.pt")
    loaded = load_classifier(tmp_path / "modelbratsclass.pt", ClassifierConfig())
    for key in ("input_blocks.0.0.weight", "out.2.c_proj.bias", "middle_block.2.emb_layers.1.bias"):
        assert torch.equal(loaded.state_dict()[key], state[key])
    with torch.no_grad():
        logits = loaded(torch.zeros(1, 1, 256, 256), torch.tensor([10]))
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
    with pytest.raises(CheckpointError, match="key-mismatch"):
        load_unet(tmp_path / "modelbratsclass.pt", UNetConfig())
    state["out.2.c_proj.weight"] = torch.zeros(3, 128, 1)
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="shape-mismatch"):
        load_classifier(tmp_path / "other.pt", ClassifierConfig())


def test_a_full_shape_unet_file_loads_strictly(tmp_path: Path) -> None:
    """The 114 M-parameter UNet's file, every tensor a broadcast constant so that the file
    stays small while its keys and shapes are the full model's."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UNet(UNetConfig()).state_dict().items()}
    state = {k: torch.full((1,), 0.01).expand(s) for k, s in shapes.items()}
    torch.save(state, tmp_path / "model090000.pt")
    assert (tmp_path / "model090000.pt").stat().st_size < 5_000_000
    loaded = load_unet(tmp_path / "model090000.pt", UNetConfig())
    weight = loaded.state_dict()["output_blocks.17.0.out_layers.3.weight"]
    assert weight.shape == (128, 128, 3, 3) and torch.all(weight == 0.01)
    with pytest.raises(CheckpointError, match="key-mismatch"):
        load_classifier(tmp_path / "model090000.pt", ClassifierConfig())
