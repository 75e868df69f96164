"""Zero-shot and ClassFine scoring on the tiny reference configuration, and the prompt cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch (the 'neural' extra) is not installed")

import torch

from inference.ctclip.checkpoint import load_checkpoint
from inference.ctclip.model import CTCLIP, BertConfig, ClassFine, CTCLIPConfig, CTViTConfig
from inference.ctclip.results import FEATURE_SETS, to_result
from inference.ctclip.scoring import (
    CTCLIPScorer,
    WordPiece,
    prompts,
    text_cache_path,
    text_latents,
)
from inference.findings import CT_RATE_LABELS
from tests.conftest import MODELS

TINY = MODELS / "ctclip-tiny-reference"


def _cfg() -> CTCLIPConfig:
    raw = json.loads((TINY / "tiny_config.json").read_text())
    return CTCLIPConfig(
        ctvit=CTViTConfig(**raw["ctvit"]), bert=BertConfig(**raw["bert"]), **raw["ctclip"]
    )


def _vocab(path: Path) -> Path:
    words = sorted({w for p in prompts() for w in WordPiece.words(p)})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    assert len(tokens) <= 100
    path.write_text("\n".join(tokens) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_model() -> CTCLIP:
    if not TINY.is_dir():
        pytest.skip(f"tiny reference {TINY} is absent (see ../shared/models)")
    model = load_checkpoint(TINY / "tiny_state_dict.pt", _cfg())
    assert isinstance(model, CTCLIP)
    return model


def test_wordpiece_uses_ctclip_special_ids(tmp_path: Path) -> None:
    tok = WordPiece(_vocab(tmp_path / "vocab.txt"))
    ids, mask = tok.encode(["Emphysema is present.", "Lung nodule is not present."])
    assert ids[0, 0] == 2 and ids[1, 0] == 2
    assert ids[0, int(mask[0].sum()) - 1] == 3
    assert int(mask[0].sum()) == 6 and int(mask[1].sum()) == 8
    assert ids[0, 6:].eq(0).all()
    assert 1 not in ids[mask.bool()].tolist()


def test_zero_shot_prompt_cache_and_probabilities(tiny_model: CTCLIP, tmp_path: Path) -> None:
    weights = tmp_path / "tiny.pt"
    weights.write_bytes(b"x")
    sha = "ab" * 32
    with pytest.raises(FileNotFoundError):
        text_latents(tiny_model, weights, sha, None)
    latents = text_latents(tiny_model, weights, sha, _vocab(tmp_path / "vocab.txt"))
    assert latents.shape == (36, 16)
    assert text_cache_path(weights, sha).is_file()
    again = text_latents(tiny_model, weights, sha, None)
    assert torch.equal(latents, again)

    ref = torch.load(TINY / "tiny_reference.pt", weights_only=True)
    scorer = CTCLIPScorer(tiny_model, "ctclip", "v2", torch.device("cpu"), latents)
    probs = scorer.probabilities_from_input(ref["input_volume"][0])
    logits = (latents @ ref["image_latents"][0]) * torch.tensor(0.7).exp()
    expected = logits.reshape(18, 2).softmax(-1)[:, 0]
    assert torch.allclose(probs, expected, atol=1e-5)
    assert ((probs > 0) & (probs < 1)).all()


def test_classfine_scoring(tmp_path: Path) -> None:
    if not TINY.is_dir():
        pytest.skip(f"tiny reference {TINY} is absent")
    state = torch.load(TINY / "tiny_state_dict.pt", weights_only=True)
    lipro = {f"trained_model.{k}": v for k, v in state.items()}
    gen = torch.Generator().manual_seed(9)
    lipro["classifier.weight"] = torch.randn(18, 16, generator=gen) * 3
    lipro["classifier.bias"] = torch.randn(18, generator=gen)
    torch.save(lipro, tmp_path / "lipro.pt")
    model = load_checkpoint(tmp_path / "lipro.pt", _cfg())
    assert isinstance(model, ClassFine)
    ref = torch.load(TINY / "tiny_reference.pt", weights_only=True)
    scorer = CTCLIPScorer(model, "ctclip-supervised", "v2", torch.device("cpu"))
    probs = scorer.probabilities_from_input(ref["input_volume"][0])
    expected = torch.sigmoid(
        torch.relu(ref["image_latents"][0]) @ lipro["classifier.weight"].t()
        + lipro["classifier.bias"]
    )
    assert torch.allclose(probs, expected, atol=1e-5)
    result = to_result(probs.tolist(), "ctclip-supervised", "v2")
    assert [f.label for f in result.findings] == list(CT_RATE_LABELS)
    assert tuple(result.features) == FEATURE_SETS["ctclip-supervised"].names
    assert result.features["ctclip_supervised.emphysema"] == pytest.approx(float(probs[7]))
    assert all(0.0 <= (f.score or 0.0) <= 1.0 for f in result.findings)


def test_to_result_rejects_wrong_count() -> None:
    with pytest.raises(ValueError):
        to_result([0.5] * 17, "ctclip", "v2")
