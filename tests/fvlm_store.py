"""A weights store holding a generated fVLM checkpoint of a tiny architecture in the published
file layout (a LAVIS checkpoint: ``{"model": state}`` with the position ids and the MLM decoder,
without the frozen head keys), registered with an architecture JSON and a tokenizer vocabulary,
as a site registers the published one. The image encoder keeps the published input size and
patch (so the real windows run), with 16 channels instead of 768."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from inference import weights_store as weights
from inference.fvlm.checkpoint import MLM_DECODER, POSITION_IDS, TOKEN_TYPES
from inference.fvlm.model import FVLM, FVLMConfig
from inference.fvlm.results import prompts
from tests.ctclip_store import write_vocab

TINY: dict[str, Any] = {
    "vit": {"hidden_size": 16, "mlp_dim": 32, "num_layers": 10, "num_heads": 2},
    "bert": {
        "vocab_size": 64,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
    },
    "embed_dim": 8,
    "max_txt_len": 16,
    "organ_attention": {"num_heads": 4},
}


def tiny_config() -> FVLMConfig:
    return FVLMConfig.from_json(TINY)


def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights of the tiny fVLM as the published file stores them."""
    torch.manual_seed(seed)
    model = FVLM(tiny_config())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
        model.temp.fill_(0.07)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bert = TINY["bert"]
    state[POSITION_IDS] = torch.arange(bert["max_position_embeddings"])[None]
    state[TOKEN_TYPES] = torch.randn(2, bert["hidden_size"])
    state[MLM_DECODER[0]] = torch.randn(bert["vocab_size"], bert["hidden_size"])
    state[MLM_DECODER[1]] = torch.zeros(bert["vocab_size"])
    return state


def vocab_file(path: Path) -> Path:
    """A ``vocab.txt`` covering the 32 prompts, with BERT's special ids first."""
    return write_vocab(path, prompts(), TINY["bert"]["vocab_size"])


def make_store(store: Path, *, vocab: bool = True, seed: int = 1) -> Path:
    """Write and register ``tiny-fvlm`` (analyzer ``fvlm``)."""
    store.mkdir(parents=True, exist_ok=True)
    architecture = store / "tiny-fvlm.json"
    architecture.write_text(json.dumps(TINY), encoding="utf-8")
    torch.save({"model": tiny_state(seed), "epoch": 3}, store / "fvlm_tiny.pth")
    if vocab:
        vocab_file(store / "vocab.txt")
    weights.register(
        store,
        store / "fvlm_tiny.pth",
        name="tiny-fvlm",
        analyzer="fvlm",
        architecture=architecture,
        vocab=store / "vocab.txt" if vocab else None,
    )
    return store
