"""A weights store holding generated CT-CLIP checkpoints of a tiny architecture: the real
file layout (raw state dicts, key names of the published files, a ClassFine file with the
``trained_model.`` prefix and its classifier), registered in a manifest with an
architecture JSON and a tokenizer vocabulary, as a site registers the published ones."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from inference import weights_store as weights
from inference.ctclip.model import CTCLIP, CTCLIPConfig
from inference.ctclip.scoring import WordPiece, prompts

# Tiny sizes of the same architecture: a 40 x 80 x 80 input, 4 x 4 x 4 tokens of 32.
TINY = {
    "ctvit": {
        "dim": 32,
        "codebook_size": 64,
        "image_size": 80,
        "patch_size": 20,
        "temporal_patch_size": 10,
        "spatial_depth": 1,
        "temporal_depth": 1,
        "dim_head": 8,
        "heads": 2,
        "frames": 40,
    },
    "bert": {
        "vocab_size": 64,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
    },
    "ctclip": {"dim_image": 512, "dim_text": 16, "dim_latent": 8},
}


def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights of the tiny CT-CLIP, as the published files store them (with the
    ``position_ids`` buffer older transformers saved), and a sharp learned temperature."""
    torch.manual_seed(seed)
    model = CTCLIP(CTCLIPConfig.from_json(TINY))
    with torch.no_grad():
        model.temperature.fill_(2.0)
        emb = model.visual_transformer.vq._codebook.embed
        emb.copy_(torch.nn.functional.normalize(torch.randn_like(emb), dim=-1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    positions = TINY["bert"]["max_position_embeddings"]
    state["text_transformer.embeddings.position_ids"] = torch.arange(positions)[None]
    return state


def vocab_file(path: Path) -> Path:
    """A ``vocab.txt`` covering the 36 prompts, with CT-CLIP's special ids first."""
    return write_vocab(path, prompts(), TINY["bert"]["vocab_size"])


def write_vocab(path: Path, texts: Iterable[str], vocab_size: int) -> Path:
    """A BERT ``vocab.txt`` (the special ids first) with every word of ``texts``: the tiny
    text encoders of CT-CLIP and fVLM need no more."""
    words = sorted({w for text in texts for w in WordPiece.words(text)})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    assert len(tokens) <= vocab_size
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def make_store(
    store: Path,
    *,
    zero_shot: bool = True,
    supervised: bool = True,
    vocab: bool = True,
    frozen_encoder: bool = True,
) -> Path:
    """Write and register the tiny checkpoints: ``tiny-ct-clip`` (analyzer ``ctclip``) and
    ``tiny-ct-lipro`` (``ctclip-supervised``), whose image encoder is the base model's
    (linear probing) unless ``frozen_encoder`` is false."""
    store.mkdir(parents=True, exist_ok=True)
    (store / "tiny-ctclip.json").write_text(json.dumps(TINY), encoding="utf-8")
    architecture = store / "tiny-ctclip.json"
    base = tiny_state(seed=1)
    if zero_shot:
        torch.save(base, store / "CT-CLIP_tiny.pt")
        if vocab:
            vocab_file(store / "vocab.txt")
        weights.register(
            store,
            store / "CT-CLIP_tiny.pt",
            name="tiny-ct-clip",
            analyzer="ctclip",
            architecture=architecture,
            vocab=store / "vocab.txt" if vocab else None,
        )
    if supervised:
        gen = torch.Generator().manual_seed(7)
        lipro = {f"trained_model.{k}": v.clone() for k, v in base.items()}
        if not frozen_encoder:
            lipro["trained_model.to_visual_latent.weight"] += 0.01
        lipro["classifier.weight"] = torch.randn(18, 8, generator=gen) * 4
        lipro["classifier.bias"] = torch.randn(18, generator=gen)
        torch.save(lipro, store / "CT_LiPro_tiny.pt")
        weights.register(
            store,
            store / "CT_LiPro_tiny.pt",
            name="tiny-ct-lipro",
            analyzer="ctclip-supervised",
            architecture=architecture,
        )
    return store
