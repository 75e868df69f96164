"""CT-CLIP v2 modules held to the original: the tiny numerical reference and the full layout."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch (the 'neural' extra) is not installed")

import torch

from inference.ctclip.checkpoint import detect_kind, load_checkpoint
from inference.ctclip.model import (
    CTCLIP,
    BertConfig,
    ClassFine,
    ContinuousPositionBias,
    CTCLIPConfig,
    CTViTConfig,
)
from inference.strict import CheckpointError
from tests.conftest import MODELS

TINY = MODELS / "ctclip-tiny-reference"
TSV = MODELS / "ctclip-v2-state-dict.tsv"
TOL = 1e-4


def _tiny_config() -> CTCLIPConfig:
    raw = json.loads((TINY / "tiny_config.json").read_text())
    return CTCLIPConfig(
        ctvit=CTViTConfig(**raw["ctvit"]), bert=BertConfig(**raw["bert"]), **raw["ctclip"]
    )


@pytest.fixture(scope="module")
def tiny() -> tuple[CTCLIP, dict[str, torch.Tensor]]:
    if not TINY.is_dir():
        pytest.skip(f"tiny reference {TINY} is absent (see ../shared/models)")
    model = load_checkpoint(TINY / "tiny_state_dict.pt", _tiny_config())
    assert isinstance(model, CTCLIP)
    ref = torch.load(TINY / "tiny_reference.pt", weights_only=True)
    return model, ref


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item()
    assert diff < TOL, f"max abs diff {diff}"


def test_tiny_reference_every_stage(tiny: tuple[CTCLIP, dict[str, torch.Tensor]]) -> None:
    with torch.no_grad():
        _check_every_stage(*tiny)


def _check_every_stage(model: CTCLIP, ref: dict[str, torch.Tensor]) -> None:
    vit = model.visual_transformer
    volume = ref["input_volume"]
    tokens = vit.embed(volume)
    _close(tokens, ref["after_patch_embedding"])
    b, t, h, w, _ = tokens.shape
    spatial = vit.spatial(ref["after_patch_embedding"])
    _close(spatial, ref["after_spatial_transformer"])
    temporal = vit.temporal(ref["after_spatial_transformer"], (b, t, h, w))
    _close(temporal, ref["after_temporal_transformer"])
    flat = temporal.reshape(b, h, w, t, -1).permute(0, 3, 1, 2, 4).reshape(b, t * h * w, -1)
    _close(vit.vq(flat), ref["after_quantiser"])
    encoded = vit(volume)
    _close(encoded, ref["encoded_tokens"])
    codebook = vit.vq._codebook.embed[0]
    rows = encoded.reshape(-1, encoded.shape[-1])
    assert bool(
        (
            torch.cdist(rows, codebook, compute_mode="donot_use_mm_for_euclid_dist")
            .min(dim=1)
            .values
            < 1e-6
        ).all()
    )
    image = model.image_latents(volume)
    _close(image, ref["image_latents"])
    _close(model.text_cls(ref["input_ids"], ref["attention_mask"]), ref["text_cls_hidden"])
    text = model.text_latents(ref["input_ids"], ref["attention_mask"])
    _close(text, ref["text_latents"])
    _close(model.logits(text, image)[:, 0], ref["logits"])


def test_tiny_rejects_tampered_state(tmp_path: Path) -> None:
    if not TINY.is_dir():
        pytest.skip(f"tiny reference {TINY} is absent")
    state = torch.load(TINY / "tiny_state_dict.pt", weights_only=True)
    extra = dict(state, stray=torch.zeros(1))
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "extra.pt", _tiny_config())
    assert err.value.reason == "key-mismatch"
    state["to_text_latent.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "shape.pt", _tiny_config())
    assert err.value.reason == "shape-mismatch"
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "junk.pt", _tiny_config())
    assert err.value.reason == "unreadable"


def test_tiny_classfine_prefixed_layout(tmp_path: Path) -> None:
    if not TINY.is_dir():
        pytest.skip(f"tiny reference {TINY} is absent")
    state = torch.load(TINY / "tiny_state_dict.pt", weights_only=True)
    lipro = {f"trained_model.{k}": v for k, v in state.items()}
    gen = torch.Generator().manual_seed(3)
    lipro["classifier.weight"] = torch.randn(18, 16, generator=gen)
    lipro["classifier.bias"] = torch.randn(18, generator=gen)
    assert detect_kind(lipro) == "classfine"
    torch.save(lipro, tmp_path / "lipro.pt")
    model = load_checkpoint(tmp_path / "lipro.pt", _tiny_config())
    assert isinstance(model, ClassFine)
    ref = torch.load(TINY / "tiny_reference.pt", weights_only=True)
    with torch.no_grad():
        probs = model.probabilities(ref["input_volume"])
        latent = ref["image_latents"]
        expected = torch.sigmoid(
            torch.relu(latent) @ lipro["classifier.weight"].t() + lipro["classifier.bias"]
        )
    assert probs.shape == (1, 18)
    _close(probs, expected)


def _published_layout() -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in TSV.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        dims = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        rows.append((key, dims, dtype))
    return rows


def test_full_published_layout_loads_strictly(tmp_path: Path) -> None:
    if not TSV.is_file():
        pytest.skip(f"{TSV} is absent (see ../shared/models)")
    layout = _published_layout()
    assert len(layout) == 362
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for key, dims, dtype in layout:
        if dtype == "int64":
            state[key] = torch.arange(dims[-1]).reshape(dims)
        else:
            state[key] = torch.empty(dims).uniform_(-0.02, 0.02, generator=gen)
    assert sum(v.numel() for v in state.values()) == pytest.approx(442.4e6, rel=1e-3)
    path = tmp_path / "CT-CLIP_v2.pt"
    torch.save(state, path)
    probe = state["to_visual_latent.weight"][3, :5].clone()
    del state
    gc.collect()
    try:
        model = load_checkpoint(path)
        assert isinstance(model, CTCLIP)
        own = model.state_dict()
        published = {k for k, _, _ in layout}
        assert published - set(own) == {"text_transformer.embeddings.position_ids"}
        assert set(own) <= published
        for key, dims, _ in layout:
            if key in own:
                assert tuple(own[key].shape) == dims, key
        ids = model.text_transformer.embeddings.position_ids
        assert torch.equal(ids, torch.arange(512).reshape(1, -1))
        assert torch.equal(model.to_visual_latent.weight[3, :5], probe)
        del model, own
    finally:
        path.unlink()
        gc.collect()


def test_position_bias_per_distinct_offset_equals_every_pair() -> None:
    """The bias MLP runs once per distinct offset and is gathered; the original runs it on
    every pair of grid cells. Same numbers, on a non-square grid."""
    torch.manual_seed(0)
    bias = ContinuousPositionBias(32, 4)
    h, w = 5, 7
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack((ys, xs), dim=-1).reshape(-1, 2)
    rel = (grid[:, None, :] - grid[None, :, :]).float()
    rel = torch.sign(rel) * torch.log(rel.abs() + 1)
    for layer in bias.net:
        rel = layer(rel)
    with torch.no_grad():
        torch.testing.assert_close(
            bias(h, w, torch.device("cpu")), rel.permute(2, 0, 1), rtol=0, atol=1e-6
        )
