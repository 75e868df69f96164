"""fVLM held to the original: every tensor of the tiny numerical reference (windows, image
encoder, organ heads, text encoder, probabilities) and strict loading of the published layout."""

from __future__ import annotations

import gc
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="torch (the 'neural' extra) is not installed")

import torch

from inference.ctclip.scoring import WordPiece
from inference.fvlm.checkpoint import (
    LACKED_KEYS,
    MLM_DECODER,
    POSITION_IDS,
    load_checkpoint,
    load_state,
)
from inference.fvlm.model import FVLM, FVLMConfig
from inference.fvlm.preprocess import Window, organ_windows
from inference.fvlm.results import ORGANS
from inference.strict import CheckpointError
from tests.conftest import MODELS

TINY = MODELS / "fvlm-tiny-reference"
TSV = MODELS / "fvlm-state-dict.tsv"
TOL = 1e-4

Tensors = dict[str, torch.Tensor]


def _raw_config() -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((TINY / "tiny_config.json").read_text())
    return raw


@pytest.fixture(scope="module")
def tiny() -> tuple[FVLM, Tensors]:
    if not TINY.is_dir():
        pytest.skip(f"tiny reference {TINY} is absent (see ../shared/models)")
    model = load_checkpoint(TINY / "tiny_state_dict.pt", FVLMConfig.from_json(_raw_config()))
    ref = torch.load(TINY / "tiny_reference.pt", weights_only=True)
    return model, ref


def _close(ours: torch.Tensor, theirs: torch.Tensor, name: str, seen: set[str]) -> None:
    seen.add(name)
    assert ours.shape == theirs.shape, f"{name}: {tuple(ours.shape)} != {tuple(theirs.shape)}"
    if theirs.dtype in (torch.bool, torch.uint8, torch.int64):
        assert torch.equal(ours.to(theirs.dtype), theirs), name
        return
    diff = (ours.float() - theirs).abs().max().item()
    assert diff < TOL, f"{name}: max abs diff {diff}"


def test_tiny_reference_every_tensor(tiny: tuple[FVLM, Tensors]) -> None:
    model, ref = tiny
    seen: set[str] = set()
    cfg = _raw_config()
    a, b, c = cfg["eval_roi_size"]
    roi = (int(a), int(b), int(c))
    with torch.no_grad():
        _close(model.temp.detach(), ref["temp"], "temp", seen)
        seen |= {"input_volume", "input_mask"}
        windows = organ_windows(ref["input_volume"][0, 0], ref["input_mask"][0, 0], roi)
        assert [w.organs[0] for w in windows] == [0, 1, 2, 3]
        for window in windows:
            organ = window.organs[0]
            _check_organ(model, ref, ORGANS[organ], organ, window, seen)
    assert seen == set(ref), f"tensors not compared: {sorted(set(ref) - seen)}"


def _check_organ(
    model: FVLM, ref: Tensors, name: str, organ: int, window: Window, seen: set[str]
) -> None:
    p = f"{name}/"
    first, last = (torch.tensor(v) for v in _box(ref["input_mask"][0, 0], organ + 1))
    xyz = torch.cat([first.flip(0), last.flip(0)]).float()
    _close(xyz, ref[p + "organ_bbox_xyzxyz"], p + "organ_bbox_xyzxyz", seen)
    _close(
        torch.tensor(window.size),
        ref[p + "window_shape_before_pad"],
        p + "window_shape_before_pad",
        seen,
    )
    _close(window.image, ref[p + "window_image"], p + "window_image", seen)
    assert window.organs[0] == organ
    _close(window.mask, ref[p + "window_mask"], p + "window_mask", seen)

    vit = model.visual_encoder
    h = vit.patch_embedding(window.image)
    _close(h, ref[p + "after_patch_embedding"], p + "after_patch_embedding", seen)
    normed, levels = vit(window.image)
    for level, block in zip(levels[:3], (3, 6, 9), strict=True):
        _close(level, ref[f"{p}hidden_after_block{block}"], f"{p}hidden_after_block{block}", seen)
    _close(normed, ref[p + "final_normed"], p + "final_normed", seen)
    assert levels[3] is normed

    flags = model.token_flags(window.mask, organ)[0]
    trace = model.organ_head(levels, flags, organ)
    _close(trace.token_flags, ref[p + "token_flags"], p + "token_flags", seen)
    _close(trace.key_value, ref[p + "attention_key_value"], p + "attention_key_value", seen)
    _close(trace.attended, ref[p + "attended_query"], p + "attended_query", seen)
    _close(trace.weights, ref[p + "attention_weights"], p + "attention_weights", seen)
    _close(trace.latent, ref[p + "image_latent"], p + "image_latent", seen)

    ids, mask = ref[p + "input_ids"], ref[p + "attention_mask"]
    _close(_tokenized(name)[0], ids, p + "input_ids", seen)
    _close(_tokenized(name)[1], mask, p + "attention_mask", seen)
    _close(model.text_cls(ids, mask), ref[p + "text_cls_hidden"], p + "text_cls_hidden", seen)
    # the padding length does not move the latent (padded keys are masked)
    short = int(mask.sum(1).max())
    _close(model.text_cls(ids[:, :short], mask[:, :short]), ref[p + "text_cls_hidden"], "-", set())
    text = model.text_latents(ids, mask)
    _close(text, ref[p + "text_latents"], p + "text_latents", seen)

    logits = model.logits(trace.latent, text)
    _close(logits, ref[p + "logits"], p + "logits", seen)
    probs = logits.softmax(-1)
    _close(probs, ref[p + "probs"], p + "probs", seen)
    _close(probs[:, 1], ref[p + "p_positive"].reshape(1), p + "p_positive", seen)
    # the path the scorer runs gives the same latent
    batched = model.organ_latents(levels, window.mask, (organ,))[organ]
    _close(batched[None], ref[p + "image_latent"], p + "image_latent", seen)


def _box(mask: torch.Tensor, label: int) -> tuple[list[int], list[int]]:
    """First and last index of ``label``, the box as the original measures it."""
    hit = (mask == label).nonzero()
    return hit.min(0).values.tolist(), hit.max(0).values.tolist()


def _tokenized(organ: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Our WordPiece on the reference's prompt pair, padded to max_txt_len like the original."""
    cfg = _raw_config()
    item = next(i for i in cfg["test_items"] if i[0] == organ)
    return _encode_with(cfg, [item[2], item[3]])


def _encode_with(cfg: dict[str, Any], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("\n".join(cfg["vocab"]) + "\n", encoding="utf-8")
        return WordPiece(path).encode(texts, pad_to=int(cfg["max_txt_len"]))


def _tsv_shapes() -> dict[str, tuple[int, ...]]:
    rows = TSV.read_text().splitlines()[1:]
    out: dict[str, tuple[int, ...]] = {}
    for row in rows:
        key, shape = row.split("\t")
        out[key] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    return out


def test_published_layout_loads_strictly(tmp_path: Path) -> None:
    """Weights of the published shape, generated from every key of the published file, load
    strictly as a LAVIS checkpoint; the keys it lacks are the frozen MLM head's."""
    if not TSV.is_file():
        pytest.skip(f"{TSV} is absent (see ../shared/models)")
    shapes = _tsv_shapes()
    assert not set(LACKED_KEYS) & set(shapes)
    gen = torch.Generator().manual_seed(0)
    state = {
        k: (
            torch.arange(s[-1])[None]
            if k.endswith("position_ids")
            else torch.randn(s, generator=gen) * 0.02
        )
        for k, s in shapes.items()
    }
    path = tmp_path / "fvlm.pth"
    torch.save({"model": state, "epoch": 9}, path)
    model = load_checkpoint(path)
    own = model.state_dict()
    assert model.cfg == FVLMConfig()
    # position ids, the unused token-type embeddings and MLM decoder checked and dropped
    assert len(own) == len(shapes) - 4
    assert torch.equal(own["query_tokens"], state["query_tokens"])
    n = sum(p.numel() for p in model.visual_encoder.parameters())
    assert n == 12 * 7_087_872 + 768 * 8192 + 768 + 1232 * 768 + 2 * 768  # ViT-B, 92.3 M
    del model, own
    gc.collect()

    def refused(broken: Tensors) -> CheckpointError:
        with torch.device("meta"):
            empty = FVLM()
        with pytest.raises(CheckpointError) as caught:
            load_state(empty, broken)
        return caught.value

    broken = dict(state)
    del broken["vision_projs.3.bias"]
    assert refused(broken).reason == "key-mismatch"
    assert "vision_projs.3.bias" in str(refused(broken))
    broken = dict(state, **{"attention.in_proj_weight": torch.zeros(2304, 512)})
    assert refused(broken).reason == "shape-mismatch"
    assert "attention.in_proj_weight" in str(refused(broken))
    ids = torch.zeros(1, 512, dtype=torch.long)
    assert refused(dict(state, **{POSITION_IDS: ids})).reason == "bad-position-ids"
    decoder = torch.zeros(30522, 256)
    broken = dict(state, **{MLM_DECODER[0]: decoder})
    assert refused(broken).reason == "shape-mismatch"  # even the dropped keys are checked
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="not-a-state-dict"):
        load_checkpoint(path)
